"""The domains: one package per domain, each behind the small interface of `loop.core.domain`.

    loop/tasks/squad/     SQuAD passages: data, absorbing and scoring, loop.evaluate's rows
    loop/tasks/arc/       ARC tasks: data, test-time training and pass@2, loop.evaluate's rows

`task.format` names the package. A third domain is one package, `loop/tasks/<name>/`, whose
`__init__` defines `DOMAIN` (an instance of a `Domain` subclass), and one
`conf/task/<name>.yaml` with `format: <name>`; nothing else names the domains.

`loop.core` never imports this package: importing it hands core the domains (`provide`), and
every entry point (`loop.run`, `loop.evaluate`, ...) imports it.
"""

from __future__ import annotations

import importlib
import pkgutil
from pathlib import Path

from loop.core.domain import Domain, domain_of, provide


def formats() -> list[str]:
    """The domains there are: the packages in this folder."""
    return sorted(m.name for m in pkgutil.iter_modules([str(Path(__file__).parent)]) if m.ispkg)


# every domain, imported now (each is a few modules of plain Python; the heavy libraries load
# on first use), so that core knows them all: their names, rows and metrics
DOMAINS: dict[str, Domain] = {name: importlib.import_module(f"{__name__}.{name}").DOMAIN
                              for name in formats()}
provide(DOMAINS)
domain = domain_of  # `loop.tasks.domain(task)`: the domain `task.format` names

"""What every domain shares, and all that `loop.core` knows of domains: the data errors, the dev
split and the seeded subset, and the small interface (`Domain`) through which the rounds, the
executor, `loop.evaluate` and `loop.compare` use a domain without knowing which one it is
(the `task` settings, TaskConfig, are in `loop.core.config`).

The domains themselves (`loop/tasks/<name>/`) each own their data format, the teacher's prompt,
the student's baseline, the scoring of a batch of self-edits and their evaluation rows. `loop.core`
never imports them: `loop.tasks` hands them to `provide` when it is imported (every entry point
imports it), and core asks `domain_of(task)` for the one `task.format` names.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from loop.core.config import TaskConfig
from loop.core.metrics import Metric, register

if TYPE_CHECKING:
    from loop.core.config import RunConfig
    from teacher.prompts import Prompt


class DataError(ValueError):
    """A dataset file that does not match the format; the message names the file and entry."""


# the dev split's own seed: never a run's seed, so that no run, whatever its seed, moves a
# passage between the teacher's training passages and the dev passages
DEV_SEED = 20_261_130


def split(contexts: list, which: str, dev_size: int) -> list:
    """`task.split` of a file's contexts, in file order: the seeded `dev_size` dev contexts,
    the rest (`train`), or all of them."""
    if which == "all":
        return contexts
    if which not in ("train", "dev"):
        raise DataError(f"unknown task.split '{which}'; choose all, train or dev")
    if dev_size >= len(contexts):
        raise DataError(f"task.split={which} with task.dev_size={dev_size}: the file has only "
                        f"{len(contexts)} contexts; set task.split=all to use every one of them "
                        "(or a smaller task.dev_size)")
    dev = set(random.Random(DEV_SEED).sample(range(len(contexts)), dev_size))
    return [c for i, c in enumerate(contexts) if (i in dev) == (which == "dev")]


def select(contexts: list, n: int | None, seed: int) -> list:
    """A seeded subset of n contexts in file order (all of them when n is None or too large)."""
    if n is None or n >= len(contexts):
        return contexts
    if n < 1:
        raise DataError(f"task.n_contexts must be at least 1, got {n}")
    keep = sorted(random.Random(seed).sample(range(len(contexts)), n))
    return [contexts[i] for i in keep]


def read_json(path: Path, what: str):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"{path}: no such file ({what})") from None
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: invalid JSON at line {e.lineno}, column {e.colno}: {e.msg}") from None


def pick(contexts: list, task: TaskConfig, held_out: bool) -> list:
    """`task.split` of a file's contexts, then only `task.ids` when set, else (`held_out`,
    loop.evaluate) only `task.eval_ids` when set."""
    contexts = split(contexts, task.split, task.dev_size)
    ids, key = (task.ids, "task.ids") if task.ids is not None or not held_out else (
        task.eval_ids, "task.eval_ids")
    if ids is None:
        return contexts
    by_id = {c.id: c for c in contexts}
    missing = [i for i in ids if i not in by_id]
    if missing:
        raise DataError(f"{task.data}: no context with id {missing[0]} ({key}); it has "
                        f"{', '.join(list(by_id)[:12])}{' ...' if len(by_id) > 12 else ''}")
    return [by_id[i] for i in ids]


class Absorbed(NamedTuple):
    """One (self-edit, inner seed) after the student absorbed it: per-question (SQuAD) or
    per-task (ARC: one entry, `{"success": 0.0 or 1.0, ...}`) score rows, the first and last
    training losses (empty when nothing was trained), and why it failed before training (ARC:
    invalid or over budget; None otherwise)."""

    scores: list[dict]
    losses: list[float]
    failure: str | None = None


Key = tuple[str, int, int]  # (context id, sample, inner seed): one evaluation of a round


class Shape(NamedTuple):
    """The sequence lengths a domain sends the models, at the settings' upper bounds, for the
    memory plan (`loop.core.memory`) and the vLLM engines' max_model_len."""

    teacher_prompt: int  # tokens of the teacher's prompt, before its self-edit
    student_sequence: int  # the longest sequence the student answers (prompt and answer)
    lora: Any  # the student's adapter settings (r, targets) the inner loop trains
    longest: int  # the longest sequence one self-edit trains on
    per_adapter: int  # the tokens one adapter trains on in one step


class Domain:
    """What the rounds (`loop.core.rounds`, `loop.core.inner`), the executor and `loop.evaluate` ask of a
    domain. One stateless instance per domain, from `domain_of(task)`; each Ray worker
    gets its `score_batch` once, when it starts (it pickles by reference to its class).

    A context is the domain's unit (a SQuAD `Passage`, an `ArcTask`): it has an `id`. A work
    item is what `batch` builds for `score_batch`: the unit the executor ships to a worker."""

    name: str
    conditions: tuple[str, ...]  # loop.evaluate's rows for this domain
    # the module that logs the final teacher adapter as an MLflow model (its `log` and `NAME`),
    # or None: not logged
    teacher_model: str | None = None
    # prefixes of the settings only this domain reads (ARC: student.arc.*); the other domains
    # never read them (`unread_settings`)
    owns: tuple[str, ...] = ()
    # settings a run folder of this domain must record to be resumed: one from before them is
    # refused (`loop.core.runfolder.check_resume`)
    resumable_since: tuple[str, ...] = ()
    metrics_note = ""  # what loop.evaluate's metrics mean (the MLflow run's description)
    metrics: tuple[Metric, ...] = ()  # the fields of its score rows (loop.core.metrics)

    def load(self, task: TaskConfig, held_out: bool = False) -> list:
        """The contexts of `task.data` (`pick` says which), validated: a bad
        entry is a DataError naming its file and entry."""
        raise NotImplementedError

    def check_settings(self, run: RunConfig) -> None:
        """The settings only this domain reads, checked by every entry point (ConfigError)."""

    def check_overrides(self, run: RunConfig, overrides: list[str]) -> None:
        """Command-line settings (`key=value`) this domain never reads, refused with the key to
        use (ConfigError)."""

    def check(self, run: RunConfig) -> None:
        """The launch checks of `loop.run` that only this domain needs (ConfigError)."""

    def prompt(self, run: RunConfig, context) -> Prompt:
        """What the teacher reads for a context."""
        raise NotImplementedError

    def baseline(self, student, run: RunConfig, context, cache, judge_model) -> list[list[dict]]:
        """The score rows rewards are measured against (`reward.baseline`), through `cache`."""
        raise NotImplementedError

    def groups(self, run: RunConfig, keys: list[Key], size: int, done) -> list[list[Key]]:
        """The round's missing evaluations cut into batches of at most `size`."""
        raise NotImplementedError

    def batch(self, run: RunConfig, group: list[Key], contexts: dict, texts: dict,
              seeds: dict[Key, int]) -> Any:
        """The work item of one batch: `texts` maps (context id, sample) to a self-edit."""
        raise NotImplementedError

    def score_batch(self, student, run: RunConfig, judge_model, item) -> list[Absorbed]:
        """One batch absorbed and scored on the student; runs on an executor's worker."""
        raise NotImplementedError

    def shape(self, run: RunConfig, longest: int | None = None) -> Shape:
        """The sequence lengths of a run (`longest`: the longest training sequence, instead of
        the one the settings allow)."""
        raise NotImplementedError

    def proxies(self, student, run: RunConfig, contexts: list, edits: dict, cache,
                path: Path) -> tuple[dict, set | None]:
        """The round's cheap rewards by (context id, sample), and the self-edits to absorb (None:
        all of them). Only SQuAD has a proxy."""
        return {}, None

    def round_metrics(self, evals: list) -> dict[str, float]:
        """Domain-specific metrics of a round's evaluations (ARC: failure fractions)."""
        return {}

    def prompt_note(self, run: RunConfig) -> str:
        """Which teacher prompt a loop.run uses, for the MLflow run's description."""
        return ""

    def evaluate(self, run: RunConfig, out_dir: Path, command: str) -> dict:
        """`python -m loop.evaluate` on this domain: its rows, intervals, table and plots."""
        raise NotImplementedError

    # -- reading evaluations back (`loop.compare`) --------------------------------------------

    unit = "context"  # what an evaluation's rows pair on (a passage, a task)
    title = ""  # the domain as a message names it (SQuAD, ARC)

    def reads(self, record: dict) -> bool:
        """Whether a `scores.jsonl` record of `loop.evaluate` is one of this domain's."""
        raise NotImplementedError

    def row_units(self, records: list[dict], condition: str, config: dict,
                  folder: Path) -> tuple[dict[str, dict], set[str]]:
        """One row's paired units, {context id: its means per metric}, in scoring order, and
        the contexts it holds only in part. `config`: the folder's recorded settings ({} when
        it has no run.json)."""
        raise NotImplementedError

    def summarise_units(self, units: dict[str, list[dict]], order: list[str], seed: int,
                        resamples: int) -> dict[str, dict]:
        """Rows of paired units (as `row_units` gives them, in `order`) summarised as
        `loop.evaluate` summarises its own: means, intervals, paired differences."""
        raise NotImplementedError

    def summary_lines(self, summary: dict[str, dict]) -> list[str]:
        """Lines printed under the table (ARC: differences with the families resampled)."""
        return []


_domains: dict[str, Domain] = {}


def provide(domains: dict[str, Domain]) -> None:
    """The domains there are, by `task.format`: `loop.tasks` calls this when it is imported, so
    that core never imports a domain."""
    _domains.clear()
    _domains.update(domains)
    register([m for d in domains.values() for m in d.metrics])


def provided() -> dict[str, Domain]:
    """The domains by `task.format`, in order (none before `loop.tasks` is imported)."""
    if not _domains:
        raise RuntimeError("no domains provided: import loop.tasks before asking loop.core for "
                           "a domain (every entry point does)")
    return dict(_domains)


def formats() -> tuple[str, ...]:
    """The `task.format` values provided."""
    return tuple(provided())


def unread_settings(domain: Domain) -> tuple[str, ...]:
    """Prefixes of the settings a domain never reads: those the other domains own."""
    return tuple(p for d in provided().values() if d is not domain for p in d.owns)


def domain_of(task: TaskConfig) -> Domain:
    """The domain `task.format` names."""
    domains = provided()
    if task.format not in domains:
        raise DataError(f"unknown task.format '{task.format}'; choose {' or '.join(domains)}")
    return domains[task.format]

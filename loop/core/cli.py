"""What every entry point does around its work: typed config, run folder, user errors."""

from __future__ import annotations

import contextlib
import shutil
import sys
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

from loop.core.assets import AssetError, check_available
from loop.core.config import ConfigError, RunConfig, to_run_config
from loop.core.domain import DataError, domain_of
from loop.core.tracking import TrackingError
from student.batched import OutOfMemory
from teacher.external import EndpointError


def check_models(run: RunConfig, roles: tuple[str, ...] = ("teacher", "student")) -> None:
    """Fail at launch, not an hour in, when a role's model cannot be loaded here."""
    for role in roles:
        m = getattr(run, role)
        check_available(role, m.name, m.hub_id, m.path, m.revision)


def command_line(entry: str) -> str:
    """The command that composed this config (`python -m <entry> <overrides>`), without resume=:
    what a resumed run must repeat."""
    from hydra.core.hydra_config import HydraConfig

    overrides = [o for o in HydraConfig.get().overrides.task if not o.startswith("resume=")]
    return " ".join([f"python -m {entry}", *overrides])


def user_errors() -> tuple[type[Exception], ...]:
    """The errors that are the user's to fix: a setting, a data file, a model that cannot be
    loaded, an endpoint, memory, a tracking server. Every entry point reports them the same way
    (`reported`); anything else is a bug and keeps its traceback."""
    return AssetError, ConfigError, DataError, EndpointError, OutOfMemory, TrackingError


@contextlib.contextmanager
def reported(cleanup: Callable[[], None] | None = None,
             also: tuple[type[Exception], ...] = ()) -> Iterator[None]:
    """A user error in the body (`user_errors`, and `also`) prints one line, `error: <message>`,
    runs `cleanup` and exits 2."""
    try:
        yield
    except (*user_errors(), *also) as e:  # evaluated when an exception arrives: no import before
        print(f"error: {e}", file=sys.stderr)
        if cleanup is not None:
            cleanup()
        sys.exit(2)


def launch(cfg, body: Callable[[RunConfig, Path], None], folder: bool = True) -> None:
    """Run `body(run_config, run_folder)`; a user error prints one message and exits 2."""
    from hydra.core.hydra_config import HydraConfig

    # peft calls a transformers method that transformers 5 deprecates; nothing a user can act on
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
    out_dir = Path(HydraConfig.get().runtime.output_dir)
    if folder:
        print(f"run folder: {out_dir}")

    def clean_up() -> None:
        hydra = HydraConfig.get()
        if folder and only_hydra_records(out_dir, hydra.output_subdir, f"{hydra.job.name}.log"):
            shutil.rmtree(out_dir)  # stopped at launch: no empty run folder left behind

    with reported(clean_up):
        run = to_run_config(cfg)
        check_overrides(run, HydraConfig.get().overrides.task)
        body(run, out_dir)


def check_overrides(run: RunConfig, overrides: list[str]) -> None:
    """A command-line setting the run's task never reads is a ConfigError, not a silent no-op
    (the domain's `check_overrides`: ARC names `student.arc.lora` for `student.lora.*`)."""
    domain_of(run.task).check_overrides(run, overrides)


def only_hydra_records(folder: Path, subdir: str, log_name: str) -> bool:
    """Whether `folder` holds nothing but what Hydra wrote as this job started: its record
    (`subdir`: `.hydra`, or `.hydra/resume_<time>` for a resume) and the job's log. Such a
    folder was made by a launch that stopped before any work; any other file keeps it."""
    record = folder / subdir
    if not (record / "config.yaml").is_file():
        return False
    if record != folder / ".hydra" and set(record.parent.iterdir()) != {record}:
        return False  # a resume's record beside earlier ones
    return set(folder.iterdir()) <= {folder / ".hydra", folder / log_name}

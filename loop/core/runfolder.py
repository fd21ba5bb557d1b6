"""A run folder and its MLflow run, for every entry point that writes one (`loop.run`,
`loop.evaluate`).

`run.json` records the command and the whole config when a folder is made; `resume=<folder>`
continues it only with the same config (`check_resume` says which keys differ and the command
to repeat), so finished work and new work answer the same question. The folder's MLflow run is
continued by a resume, never duplicated (`start_tracking`).
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Callable, Iterator
from pathlib import Path

from loop.core import tracking
from loop.core.config import ConfigError, RunConfig
from loop.core.domain import domain_of, unread_settings
from loop.core.ledger import write_json_atomic
from loop.core.metrics import is_log_probability
from loop.core.tracking import flatten

log = logging.getLogger(__name__)

# How the student's work is batched, not what it computes (the paths agree up to
# floating-point order, tests/student/test_batched.py), or where it stops: a resume may change
# them, e.g. after running out of memory.
EXECUTION = frozenset({"student.train.batched", "student.train.max_adapters",
                       "student.train.pass_tokens", "student.eval.batch_size", "executor.name",
                       "executor.address", "executor.num_workers", "executor.cpus_per_worker",
                       "executor.gpus_per_worker", "executor.max_retries",
                       "teacher.train.processes", "teacher.vllm_memory", "student.vllm_memory",
                       "teacher.vllm_tensor_parallel", "tracking.system_metrics",
                       "tracking.system_metrics_interval", "evaluate.sample_only",
                       "teacher.train.micro_batch", "teacher.train.checkpointing",
                       "plan.gpu_memory", "plan.gpus", "plan.check"})


# Settings an older run folder's record lacks: one written before them (and before its domain's
# `resumable_since`) comes from a version whose runs this one does not continue (passages,
# training or prompts that no setting restores), so its resume is refused with the command that
# starts it afresh.
RESUMABLE_SINCE = ("task.split", "student.train.max_grad_norm", "teacher.sampling.merged")


def check_resume(run: RunConfig, out_dir: Path, command: str,
                 grows: Callable[[dict, dict], set[str]] | None = None,
                 unread: tuple[str, ...] = ()) -> dict:
    """The folder's record ({"command", "config", "mlflow_run_id"}), written on a fresh start.

    A resumed run must have the config of the run it continues: otherwise finished rounds and
    new ones would answer different questions. The error lists the keys that differ. Keys the
    record lacks (settings added to the tool after the run started) are taken at their current
    values, with a warning naming them; so are changed `EXECUTION` settings. `grows(old, new)`
    names keys that may differ because the resume extends the run without changing what is
    recorded (loop.evaluate: added conditions); the record then takes the new config and command.
    Keys starting with a prefix in `unread` are settings the command never reads (loop.evaluate:
    the M-step's `teacher.train.`): they may differ, with a warning.
    """
    path = out_dir / "run.json"
    config = {k: v for k, v in flatten(run).items() if k != "resume"}
    if run.resume is None:
        if path.exists():
            raise ConfigError(f"{out_dir} already holds a run; continue it with resume={out_dir}")
        record = {"command": command, "config": config, "mlflow_run_id": None}
        out_dir.mkdir(parents=True, exist_ok=True)
        write_json_atomic(path, record)
        return record
    if not path.exists():
        raise ConfigError(f"resume={run.resume}: no run.json there; is it a loop.run folder?")
    record = json.loads(path.read_text())
    since = (*RESUMABLE_SINCE, *domain_of(run.task).resumable_since)
    if lacks := [k for k in since if k not in record["config"]]:
        raise ConfigError(f"resume={run.resume} was started by an earlier version of seal-ts (its "
                          f"run.json has no {lacks[0]}), whose runs this version does not "
                          f"continue; start it afresh in a new folder: {record['command']}")
    old = {k: str(v) for k, v in record["config"].items()}
    new = {k: str(v) for k, v in config.items()}
    added = sorted(new.keys() - old.keys())
    if added:
        log.warning("resume=%s: settings added since this run started take their current values: "
                    "%s", run.resume, ", ".join(f"{k}={new[k]}" for k in added))
    differ = sorted(k for k in old if old.get(k) != new.get(k))
    how = [k for k in differ if k in EXECUTION]
    if how:
        log.warning("resume=%s: execution settings changed (the results do not depend on them): "
                    "%s", run.resume, ", ".join(f"{k}: {old[k]} -> {new.get(k)}" for k in how))
        differ = [k for k in differ if k not in EXECUTION]
    ignored = [k for k in differ if unread and k.startswith(unread)]
    if ignored:
        log.warning("resume=%s: settings this command does not read changed (ignored): %s",
                    run.resume, ", ".join(f"{k}: {old[k]} -> {new.get(k)}" for k in ignored))
        differ = [k for k in differ if k not in ignored]
    extended = [k for k in differ if k in (grows(record["config"], config) if grows else ())]
    differ = [k for k in differ if k not in extended]
    if differ:
        lines = "; ".join(f"{k}: {old.get(k)} -> {new.get(k)}" for k in differ[:8])
        raise ConfigError(f"resume={run.resume} was started with another config ({lines}). "
                          f"Resume it with the same overrides: {record['command']} "
                          f"resume={run.resume}")
    if extended:
        log.warning("resume=%s extends the run (%s); what is recorded is kept", run.resume,
                    "; ".join(f"{k}: {old.get(k)} -> {new.get(k)}" for k in extended))
        record = {**record, "command": command, "config": config}
        write_json_atomic(path, record)
        # a finished run's results (its final adapter) are no longer final: written again at
        # the end, so a stopped extension is not mistaken for a finished run
        (out_dir / "results.json").unlink(missing_ok=True)
    return record


def check_tracking(run: RunConfig) -> None:
    """A tracking server that cannot be reached fails at launch, before any run folder."""
    if run.tracking.enabled:
        tracking.check_reachable(run.tracking.uri)


def start_tracking(run: RunConfig, out_dir: Path, record: dict, entry: str, run_name: str,
                   datasets: dict[str, list] | None = None):
    """The run folder's MLflow run: the one in `record` continued (a resume), or a new one whose
    id is then written to run.json. `datasets`: name -> the contexts the run trains on
    (`loop.run`'s rounds) or is scored on (`loop.evaluate`), logged as MLflow dataset inputs at
    every start (MLflow keeps one input per dataset name and digest, so a resume adds none)."""
    tracker = tracking.start(run.tracking, experiment=run.task.name, run_name=run_name, config=run,
                             tags={"entry": entry, "teacher": run.teacher.name,
                                   "student": run.student.name, "task": run.task.name},
                             run_id=record["mlflow_run_id"], pending=out_dir / tracking.PENDING,
                             description=run_description(run, entry, record["command"]),
                             unread=unread_settings(domain_of(run.task)))
    if tracker.run_id and tracker.run_id != record["mlflow_run_id"]:
        write_json_atomic(out_dir / "run.json", {**record, "mlflow_run_id": tracker.run_id})
    for name, contexts in (datasets or {}).items():  # again on a resume: MLflow keeps one
        tracker.log_dataset(name, run.task.data, [c.id for c in contexts],  # per name and digest
                            "training" if entry == "loop.run" else "evaluation")
    return tracker


@contextlib.contextmanager
def tracked(run: RunConfig, out_dir: Path, record: dict, entry: str, run_name: str,
            datasets: dict[str, list] | None = None) -> Iterator:
    """The run folder's MLflow run around the body (`start_tracking`): closed as FINISHED when
    the body returns, FAILED when it raises. Every entry point that writes a run folder works
    inside one: `with tracked(...) as tracker:`."""
    tracker = start_tracking(run, out_dir, record, entry, run_name, datasets)
    status = "FAILED"
    try:
        yield tracker
        status = "FINISHED"
    finally:
        tracker.close(status)


def dataset_name(task) -> str:
    """How MLflow's Dataset column names a task's contexts: the file's stem, and its split."""
    return Path(task.data).stem + ("" if task.split == "all" else f" ({task.split})")


def run_description(run: RunConfig, entry: str, command: str) -> str:
    """The MLflow run's description (Markdown): the command, the pairing, the data, and what
    the numbers mean."""
    def model(m) -> str:
        adapter = getattr(m, "adapter", None)
        return f"**{m.name}** (`{m.hub_id}`" + (f", adapter `{adapter}`)" if adapter else ")")

    data = Path(run.task.data).name
    lines = [f"`{command}`", "",
             f"Teacher {model(run.teacher)}, student {model(run.student)}, task **{run.task.name}** "
             f"(`{data}`, split `{run.task.split}`), seed {run.seed}.", ""]
    unit = "nats per gold-answer token" if is_log_probability(run.reward.metric) else "points"
    if entry == "loop.run":
        base = {"student": "the frozen student's", "passage": "the student's after absorbing the "
                "passage alone", "passage_matched": "the student's after absorbing the passage "
                "alone for as many steps", "none": "0"}.get(run.reward.baseline,
                                                             run.reward.baseline)
        prompt = domain_of(run.task).prompt_note(run)
        how = ("with it in its prompt (nothing absorbed)" if run.reward.metric == "context_logprob"
               else "after absorbing it through a fresh LoRA")
        lines.append(
            f"{run.loop.rounds} ReST-EM rounds of {run.loop.contexts_per_round} contexts x "
            f"{run.loop.k} self-edits{prompt}. A self-edit's reward (`reward/*`) is the "
            f"student's `{run.reward.metric}` {how}, minus {base} ({unit}); the teacher is "
            f"trained on the `{run.reward.filter}` self-edits. `round_<r>/self_edits.json` "
            "lists every one.")
    else:
        what = domain_of(run.task).metrics_note
        lines.append(
            f"Rows `{', '.join(run.evaluate.conditions)}`, scored on the same contexts: "
            f"`<row>/<metric>` is the mean over contexts; {what}. `results.json` and "
            f"`results.png` have the 95 % intervals and the paired differences.")
    return "\n".join(lines)

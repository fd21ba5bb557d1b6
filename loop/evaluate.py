"""`python -m loop.evaluate`: score conditions on an evaluation set and print one row per condition.

    python -m loop.evaluate                                    # base and passage on eval200
    python -m loop.evaluate task.n_contexts=50                 # a seeded, recorded subset
    python -m loop.evaluate task.data=my_passages.json evaluate.conditions=[base]

    python -m loop.evaluate evaluate.conditions=[base,passage,teacher_base,teacher] \
        teacher.adapter=outputs/<a loop.run folder>       # did training the teacher help?

Conditions (rows):
- `base`: the frozen student, no adaptation (cached once per context: loop.baseline);
- `passage`: a fresh LoRA trained on the passage alone (the title-prefixed passage as one
  sequence), then discarded;
- `teacher`: a fresh LoRA trained on self-edits of the teacher (`evaluate.samples` per
  passage, each absorbed separately with SEAL's data rule: its lines plus the passage), with the
  trained adapter `teacher.adapter` when one is given;
- `teacher_base`: the same, from the teacher without any adapter (the untrained teacher).
- `external`: the same, with self-edits from an OpenAI-compatible endpoint
  (`evaluate.external.url` and `.model`; the key from the environment: teacher.external), e.g. a
  larger hosted model, a `vllm serve`, or `python -m loop.serve`.
  The self-edit conditions draw with the same seeds (the prompt and the sample index decide
  them) and absorb with the same seeds, so their differences are paired down to the sample.

Every condition is scored on the same contexts, so differences are paired: the table shows each
condition's mean over contexts with a 95% bootstrap interval, and its paired difference from
every condition listed before it. Results go to the run folder (`results.json`, `scores.jsonl`,
`self_edits.jsonl`, `results.png`) and to an MLflow run.

A killed evaluation continues with `resume=<its folder>` (same overrides): self-edits and
per-passage scores already recorded are read back, never recomputed. A resume may also add
conditions (a longer `evaluate.conditions`, with `teacher.adapter` or `evaluate.external.*` for
a row that is new): the recorded rows are kept and only the new ones computed, so a trained
teacher is compared with the rows of an evaluation that ran while it trained.

With `task=arc` the rows are ARC's (base, teacher_base, teacher, oracle): see `loop.arc.evaluate`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from pathlib import Path

import hydra

from loop.checks import check_settings
from loop.cli import check_models, command_line, launch
from loop.config import CONF_DIR, ConfigError, RunConfig, register
from loop.judge import add_verdicts, load_judge
from loop.ledger import append_jsonl, batches_to_run, read_jsonl, write_json_atomic
from loop.seeds import derive_seed

log = logging.getLogger(__name__)
register()

CONDITIONS = ("base", "passage", "teacher_base", "teacher", "external")
TEACHER_CONDITIONS = ("teacher_base", "teacher")  # sampled from the local teacher
SELF_EDIT_CONDITIONS = (*TEACHER_CONDITIONS, "external")
METRICS = ("exact_match", "f1", "contains", "logprob")  # per question; EM/F1/contains in percent


def passage_means(question_scores: list[dict]) -> dict[str, float | None]:
    """Per-context means of each metric; EM, F1, contains and judge as percentages.

    Judge errors (no clear yes/no) are left out of the judge's mean and counted in
    `judge_errors`; a context whose verdicts are all errors has no judge mean (None).
    """
    n = len(question_scores)
    out: dict[str, float | None] = {}
    for m in METRICS:
        mean = sum(q[m] for q in question_scores) / n
        out[m] = mean if m == "logprob" else 100 * mean
    if "judge" in question_scores[0]:
        verdicts = [q["judge"] for q in question_scores if q["judge"] is not None]
        out["judge"] = 100 * sum(verdicts) / len(verdicts) if verdicts else None
        out["judge_errors"] = n - len(verdicts)
    return out


def score_condition(condition: str, passage, model, tokenizer, run: RunConfig,
                    self_edits: list[str] | None = None) -> list[dict]:
    """Per-question scores of one condition on one passage, as plain dicts (JSON-ready).

    Teacher conditions get the passage's self-edits and score every (self-edit, question).
    `base` answers on the backend the adapters answer on (student.eval_backend), so every
    difference in the table is between answers of one backend.
    """
    from loop.outer import score_context

    if condition == "base":
        return score_context(model, tokenizer, passage, run, None, generate=True)
    return score_condition_many(condition, [passage], model, tokenizer, run,
                                {passage.id: self_edits or []})[0]


def score_condition_many(condition: str, passages, model, tokenizer, run: RunConfig,
                         self_edits: dict[str, list[str]]) -> list[list[dict]]:
    """`score_condition` (not `base`) for many passages: all their adapters are absorbed and
    scored together, student.train.max_adapters per pass when student.train.batched."""
    from loop.outer import absorb_and_score_many

    jobs, owner = [], []
    for n, passage in enumerate(passages):
        if condition == "passage":
            mine = [(derive_seed(run.seed, "absorb", condition, passage.id),
                     condition_texts(condition, passage, run, None))]
        else:  # the same absorb seeds for both teacher conditions: paired down to the sample
            mine = [(derive_seed(run.seed, "absorb", "teacher", passage.id, i),
                     condition_texts(condition, passage, run, text))
                    for i, text in enumerate(self_edits.get(passage.id) or [])]
        for i, (seed, texts) in enumerate(mine):
            jobs.append((passage, texts, seed))
            owner.append((n, i))
    # judged later, with the other conditions
    results = absorb_and_score_many(model, tokenizer, jobs, run, judge_model=None, generate=True)
    out: list[list[dict]] = [[] for _ in passages]
    for (n, i), (_, _, seed), (scores, losses) in zip(owner, jobs, results, strict=True):
        first, last = losses or (None, None)
        out[n] += [{**s, "sample": i, "seed": seed, "train_loss_first": first,
                    "train_loss_last": last} for s in scores]
    return out


def condition_texts(condition: str, passage, run: RunConfig, self_edit: str | None) -> list[str]:
    """What a condition trains on for one passage: the passage alone, or a self-edit by SEAL's rule."""
    from loop.outer import passage_texts
    from student.data import training_texts

    if condition == "passage":
        return passage_texts(passage, run)
    return training_texts(self_edit or "", passage.title, passage.context, run.student.data)


def score_together(condition: str, passages, model, tokenizer, run: RunConfig,
                   self_edits: dict[str, list[str]] | None) -> dict[str, list[dict]]:
    """task.absorb=together: one student absorbs every passage's texts in one training run
    (continued pretraining), then answers every question; scores are kept per passage."""
    from student.absorb import absorbing, train
    from student.evaluate import score_questions

    texts = []
    for p in passages:
        edits = (self_edits or {}).get(p.id) or [None]
        for text in edits if condition != "passage" else [None]:
            texts += condition_texts(condition, p, run, text)
    # the same seed for every condition: they differ only by what they absorb
    seed = derive_seed(run.seed, "absorb-together")
    out = {}
    with absorbing(model, run.student, seed) as adapted:
        result = train(adapted, tokenizer, texts, run.student, seed)
        for p in passages:
            qa = [(q.question, q.answer) for q in p.questions]
            out[p.id] = [{**dataclasses.asdict(s), "seed": seed, "sequences": len(texts),
                          "train_loss_first": result.losses[0],
                          "train_loss_last": result.losses[-1]}
                         for s in score_questions(adapted, tokenizer, p.title, qa, run.student)]
    return out


def score_sequential(condition: str, passages, model, tokenizer, run: RunConfig,
                     self_edits: dict[str, list[str]] | None):
    """task.absorb=sequential (forgetting): edits j = 0, 1, ... absorbed one after the other;
    after edit j every passage i <= j is scored. `evaluate.forgetting`: `grow` keeps training one
    adapter (or, with student.train.method=full, the weights); `merge` merges each edit's fresh
    LoRA into the weights before the next, as the paper's forgetting experiment does. The base is
    restored afterwards either way. Returns the last row's per-passage scores and the matrix of
    per-passage means (row j: after edit j)."""
    from contextlib import ExitStack

    from tqdm import tqdm

    from student.absorb import absorbing, fresh_adapter, restored, train
    from student.evaluate import score_questions

    def texts(p):
        edits = (self_edits or {}).get(p.id) or [None]
        return condition_texts(condition, p, run, edits[0])  # the first self-edit per passage

    def score(m, p):
        qa = [(q.question, q.answer) for q in p.questions]
        return [dataclasses.asdict(s) for s in score_questions(m, tokenizer, p.title, qa, run.student)]

    mode = run.evaluate.forgetting
    seed = derive_seed(run.seed, "absorb-sequential")
    matrix, last = [], {}
    with ExitStack() as stack:
        if mode == "grow":
            current = stack.enter_context(absorbing(model, run.student, seed))
        else:  # merge: each edit's LoRA goes into the weights, which are put back at the end
            current = stack.enter_context(restored(model))
        for j, p in enumerate(tqdm(passages, desc=f"{condition}: sequential edits", unit="edit")):
            if mode == "grow":
                train(current, tokenizer, texts(p), run.student, derive_seed(seed, j))
            else:
                with fresh_adapter(model, run.student.lora, derive_seed(seed, j)) as adapted:
                    train(adapted, tokenizer, texts(p), run.student, derive_seed(seed, j))
                    adapted.merge_adapter()  # into the base weights; unload() then keeps them
            last = {q.id: score(current, q) for q in passages[: j + 1]}
            matrix.append([passage_means(last[q.id]) for q in passages[: j + 1]])
    return last, matrix


def resolve_adapter(spec: str, run: RunConfig) -> Path:
    """teacher.adapter -> an adapter folder: given directly, a loop.run folder's final adapter,
    or an MLflow run id whose artifacts hold one (downloaded); checked against the teacher."""
    path = find_adapter(spec, run)
    check_adapter_base(path, spec, run)
    return path


def check_adapter_base(path: Path, spec: str, run: RunConfig) -> None:
    """An adapter trained on another base model than the teacher's is refused: its recorded
    base (adapter_config.json) is compared with the teacher by architecture, vocabulary and
    size when that base can be read, and its LoRA shapes with the teacher's dimensions always."""
    import re

    from safetensors import safe_open
    from transformers import AutoConfig

    t = run.teacher
    source = t.path or t.hub_id
    kwargs = dict(revision=t.revision, trust_remote_code=t.trust_remote_code)
    mine = AutoConfig.from_pretrained(source, **kwargs)
    recorded = json.loads((path / "adapter_config.json").read_text()).get("base_model_name_or_path")
    why = None
    if recorded and recorded != source:
        try:
            theirs = AutoConfig.from_pretrained(recorded, trust_remote_code=t.trust_remote_code)
        except Exception:  # moved or not downloaded here: the shapes below still tell
            theirs = None
        if theirs is not None:
            for key in ("model_type", "vocab_size", "hidden_size", "num_hidden_layers"):
                if getattr(theirs, key, None) != getattr(mine, key, None):
                    why = f"{key} {getattr(theirs, key, None)} there, {getattr(mine, key, None)} here"
                    break
    weights = path / "adapter_model.safetensors"
    if why is None and weights.exists():
        heads = getattr(mine, "num_attention_heads", 1)
        head_dim = getattr(mine, "head_dim", None) or mine.hidden_size // heads
        dims = {mine.hidden_size, getattr(mine, "intermediate_size", None), heads * head_dim,
                getattr(mine, "num_key_value_heads", heads) * head_dim}
        with safe_open(str(weights), "pt") as f:
            for key in f.keys():  # noqa: SIM118 (safe_open is not iterable)
                shape = f.get_slice(key).get_shape()
                layer = re.search(r"layers\.(\d+)\.", key)
                if layer and int(layer.group(1)) >= mine.num_hidden_layers:
                    why = f"{key} is beyond the teacher's {mine.num_hidden_layers} layers"
                elif ("lora_A" in key and shape[1] not in dims) or (
                        "lora_B" in key and shape[0] not in dims):
                    why = f"{key} has shape {list(shape)}"
                if why:
                    break
    if why:
        raise ConfigError(f"teacher.adapter={spec} was trained on another base model "
                          f"({recorded or 'unrecorded'}) than teacher={t.name} ({source}): {why}. "
                          "Choose the teacher preset the adapter was trained for, or an adapter "
                          "trained for this teacher")


def find_adapter(spec: str, run: RunConfig) -> Path:
    if spec.startswith(("runs:/", "models:/")):  # a logged teacher model (loop.teacher_model)
        from loop.teacher_model import download_adapter

        try:
            return download_adapter(spec, run.tracking.uri)
        except Exception as e:  # MLflow raises its own exception types per store
            raise ConfigError(f"teacher.adapter={spec}: not a teacher model in "
                              f"{run.tracking.uri} ({type(e).__name__}: {e})") from None
    path = Path(spec)
    if (path / "adapter_config.json").is_file():
        return path
    if (path / "results.json").is_file():
        final = json.loads((path / "results.json").read_text()).get("final_adapter")
        if not final:
            raise ConfigError(f"teacher.adapter={spec}: that run trained no teacher adapter")
        return path / final
    if path.exists():
        raise ConfigError(f"teacher.adapter={spec}: neither an adapter folder (adapter_config.json) "
                          "nor a finished loop.run folder (results.json)")
    import mlflow

    mlflow.set_tracking_uri(run.tracking.uri)
    client = mlflow.MlflowClient()
    try:
        client.get_run(spec)
    except Exception as e:  # MLflow raises its own exception types per store
        raise ConfigError(f"teacher.adapter={spec}: no such folder, and not a run id in "
                          f"{run.tracking.uri} ({type(e).__name__})") from None
    results = json.loads(Path(client.download_artifacts(spec, "results.json")).read_text())
    if not results.get("final_adapter"):
        raise ConfigError(f"teacher.adapter={spec}: that run trained no teacher adapter")
    return Path(client.download_artifacts(spec, results["final_adapter"]))


def sample_self_edits(run: RunConfig, passages, out_dir: Path) -> dict[str, dict[str, list[str]]]:
    """{condition: {passage id: self-edits}} for the self-edit conditions asked for, recorded
    in `self_edits.jsonl` (condition, context, sample, seed, text). Those already recorded (a
    resumed evaluation) are read back; each sample has its own seed, so the rest are drawn
    exactly as they would have been."""
    from tqdm import tqdm

    from loop.outer import context_prompt
    from teacher.external import EndpointGenerator

    wanted = [c for c in SELF_EDIT_CONDITIONS if c in run.evaluate.conditions]
    path = out_dir / "self_edits.jsonl"
    done = {(r["condition"], r["context"], r["sample"]): r["text"] for r in read_jsonl(path)}
    keys = [(p.id, i) for p in passages for i in range(run.evaluate.samples)]
    by_id = {p.id: p for p in passages}
    local = None
    for cond in wanted:
        recorded = {key for key in keys if (cond, *key) in done}
        if len(recorded) == len(keys):
            continue
        if cond == "external":
            generator = EndpointGenerator(run.evaluate.external, run.teacher.sampling)
            step = 4 * max(1, run.evaluate.external.concurrency)  # recorded after each batch
        else:
            generator = local = local or load_generator(run)
            step = max(1, run.teacher.sampling.batch_size)
            adapter = resolve_adapter(run.teacher.adapter, run) if (
                cond == "teacher" and run.teacher.adapter) else None
            generator.use_adapter(adapter)
        # a batch recorded in part by a killed run is drawn whole again: the same companions
        for batch in tqdm(batches_to_run(keys, step, recorded), desc=f"{cond}: sampling",
                          unit="batch"):
            # the same seeds for every self-edit condition: only the writer differs
            seeds = [derive_seed(run.seed, "evaluate-sample", pid, i) for pid, i in batch]
            samples = generator.sample([context_prompt(run, by_id[pid]) for pid, _ in batch], seeds)
            for (pid, i), seed, s in zip(batch, seeds, samples, strict=True):
                if (pid, i) in recorded:
                    continue
                done[(cond, pid, i)] = s.text
                append_jsonl(path, {"condition": cond, "context": pid, "sample": i,
                                    "seed": seed, "text": s.text, "cut": s.cut})
    if not run.teacher.adapter and {"teacher", "teacher_base"} <= set(wanted):
        log.warning("teacher.adapter is not set: `teacher` and `teacher_base` are the same teacher")
    return {cond: {p.id: [done[(cond, p.id, i)] for i in range(run.evaluate.samples)]
                   for p in passages} for cond in wanted}


def load_generator(run: RunConfig):
    from loop.outer import make_generator
    from teacher.model import load_teacher

    return make_generator(run, None if run.teacher.backend == "vllm" else load_teacher(run.teacher))


def summarise(per_passage: dict[str, list[dict[str, float]]], seed: int, resamples: int,
              metrics: tuple[str, ...] = METRICS) -> dict[str, dict]:
    """Per condition and metric: mean with interval, and the paired difference from every
    condition before it (`vs_<other>`). Rows are paired units (passages; ARC: tasks, see
    `loop.arc.summarise`)."""
    from loop.stats import bootstrap, paired_difference

    summary: dict[str, dict] = {}
    for cond, rows in per_passage.items():
        summary[cond] = {}
        for m in metrics + (("judge",) if "judge" in rows[0] else ()):
            values = [r[m] for r in rows if r[m] is not None]
            if not values:
                continue
            entry = {"estimate": dataclasses.asdict(bootstrap(values, seed, resamples))}
            for ref in list(per_passage)[: list(per_passage).index(cond)]:
                pairs = [(r[m], b[m]) for r, b in zip(rows, per_passage[ref], strict=True)
                         if r[m] is not None and b.get(m) is not None]
                if pairs:
                    entry[f"vs_{ref}"] = dataclasses.asdict(paired_difference(
                        [a for a, _ in pairs], [b for _, b in pairs], seed, resamples))
            summary[cond][m] = entry
        if "judge_errors" in rows[0]:
            summary[cond]["judge_errors"] = sum(r["judge_errors"] for r in rows)
    return summary


def proxy_correlations(per_passage: dict[str, list[dict]]) -> dict[str, dict[str, float | None]]:
    """How well the cheap reward tracks the real ones: per condition, Pearson's r across
    passages between its gain over `base` in gold-answer log-probability (no generation) and
    its gain in each generated-answer metric."""
    from loop.stats import pearson

    out: dict[str, dict[str, float | None]] = {}
    if "base" not in per_passage or len(per_passage["base"]) < 2:
        return out
    base = per_passage["base"]
    for cond, rows in per_passage.items():
        if cond == "base":
            continue
        lp = [r["logprob"] - b["logprob"] for r, b in zip(rows, base, strict=True)]
        out[cond] = {}
        for m in ("f1", "contains", "judge"):
            pairs = [(x, r[m] - b[m]) for x, r, b in zip(lp, rows, base, strict=True)
                     if r.get(m) is not None and b.get(m) is not None]
            if len(pairs) >= 2:
                out[cond][m] = pearson([x for x, _ in pairs], [y for _, y in pairs])
    return out


def fmt(r: float | None) -> str:
    return "-" if r is None else f"{r:.2f}"


def format_table(summary: dict[str, dict], n_passages: int, n_questions: int,
                 footer: str | None = None) -> str:
    """Means with 95% intervals per condition, then paired differences from `base`."""
    metrics = [m for m in (*METRICS, "judge", "success") if any(m in s for s in summary.values())]
    names = {"exact_match": "EM %", "f1": "F1 %", "contains": "contains %", "logprob": "logprob",
             "judge": "judge %", "success": "success %"}

    def cell(e: dict | None) -> str:
        return f"{e['mean']:6.2f} [{e['low']:6.2f}, {e['high']:6.2f}]" if e else f"{'-':>22}"

    # labels of loop.compare can be longer than the conditions' names
    width = max([16, *(len(f"minus {c}") + 1 for c in summary)])

    def block(title: str, key: str, rows: list[str]) -> list[str]:
        head = f"{title:<{width}}" + "".join(f"{names[m]:>24}" for m in metrics)
        return [head, "-" * len(head)] + [
            f"{c:<{width}}" + "".join(f"  {cell(summary[c].get(m, {}).get(key))}" for m in metrics)
            for c in rows]

    lines = block("condition", "estimate", list(summary))
    for ref in summary:  # paired differences from each condition, for those listed after it
        later = [c for c in summary
                 if any(f"vs_{ref}" in summary[c].get(m, {}) for m in metrics)]
        if later:
            lines += [""] + block(f"minus {ref}", f"vs_{ref}", later)
    lines.append(footer or f"{n_passages} passages, {n_questions} questions; mean over passages "
                           "[95% bootstrap interval]; differences are paired by passage")
    errors = {c: s["judge_errors"] for c, s in summary.items() if "judge_errors" in s}
    if errors:
        lines.append("judge errors (no clear yes/no, left out of judge %): "
                     + ", ".join(f"{c} {n}" for c, n in errors.items()))
    return "\n".join(lines)


def added_conditions(old: dict, new: dict) -> set[str]:
    """The keys a resume may change when it adds rows: `evaluate.conditions` (a superset of the
    recorded one), and the settings of a row that is new (`teacher.adapter` for `teacher`,
    `evaluate.external.*` for `external`). Rows already recorded keep their exact config."""
    before, after = old.get("evaluate.conditions"), new.get("evaluate.conditions")
    if not (isinstance(before, list) and isinstance(after, list)
            and set(before) < set(after)):
        return set()
    keys = {"evaluate.conditions"}
    if "teacher" not in before:
        keys.add("teacher.adapter")
    if "external" not in before:
        keys |= {k for k in new if k.startswith("evaluate.external.")}
    return keys


def open_evaluation(run: RunConfig, out_dir: Path, command: str,
                    allowed: tuple[str, ...]) -> tuple[Path, dict, list[str]]:
    """What every evaluation checks before working, so a mistake fails at launch: the
    conditions, the models, `teacher.adapter`; then its run folder (a new one, or the one
    `resume=` continues). Returns (run folder, its run.json record, teacher conditions asked)."""
    from loop.outer import check_resume, check_tracking, validate_backends, validate_student

    check_settings(run)
    validate_student(run)
    validate_backends(run)
    check_tracking(run)
    unknown = sorted(set(run.evaluate.conditions) - set(allowed))
    if unknown:
        raise ConfigError(f"unknown evaluate.conditions {unknown} for task={run.task.name}; "
                          f"choose from {list(allowed)}")
    teacher_conditions = [c for c in SELF_EDIT_CONDITIONS if c in run.evaluate.conditions]
    local = [c for c in TEACHER_CONDITIONS if c in run.evaluate.conditions]
    check_models(run, roles=("teacher", "student") if local else ("student",))
    if run.teacher.adapter and "teacher" in teacher_conditions:
        resolve_adapter(run.teacher.adapter, run)  # a wrong path fails now, not after sampling
    if "external" in teacher_conditions:
        from teacher.external import EndpointGenerator

        EndpointGenerator(run.evaluate.external, run.teacher.sampling).check()
    out_dir = Path(run.resume) if run.resume else Path(out_dir)
    # an evaluation never trains the teacher: a folder from before task=arc's M-step changed
    # resumes without restating the old teacher.train.* values
    record = check_resume(run, out_dir, command, grows=added_conditions,
                          unread=("teacher.train.",))
    print(f"resume after a crash with: {record['command']} resume={out_dir}")
    return out_dir, record, teacher_conditions


def evaluate(run: RunConfig, out_dir: Path, command: str = "python -m loop.evaluate") -> dict:
    """Score every condition on every selected context; write and return the results.

    With `resume=<folder>` the folder's recorded self-edits and scores are read back and only
    the missing ones computed (the config must match the folder's `run.json`)."""
    from tqdm import tqdm

    from loop import plots
    from loop.baseline import BaselineCache
    from loop.outer import dataset_name, start_tracking
    from loop.tasks import load_contexts, select
    from student.model import load_student

    if run.task.format == "arc":
        from loop import arc

        return arc.evaluate(run, out_dir, command)
    if run.task.absorb not in ("single", "together", "sequential"):
        raise ConfigError(f"unknown task.absorb '{run.task.absorb}'; choose single, together or "
                          "sequential")
    if run.evaluate.forgetting not in ("grow", "merge"):
        raise ConfigError(f"unknown evaluate.forgetting '{run.evaluate.forgetting}'; choose grow "
                          "or merge")
    passages = select(load_contexts(run.task, held_out=True), run.task.n_contexts, run.seed)
    by_id = {p.id: p for p in passages}
    out_dir, record, teacher_conditions = open_evaluation(run, out_dir, command, CONDITIONS)
    n_questions = sum(len(p.questions) for p in passages)
    recorded = read_jsonl(out_dir / "scores.jsonl")
    done = {(r["context"], r["condition"]): r["questions"] for r in recorded}
    if done:
        print(f"resuming: {len(done)} (passage, condition) scores read back from {out_dir}")
    # self-edits first, then the teacher is freed before the student's work
    self_edits = sample_self_edits(run, passages, out_dir) if teacher_conditions else {}
    judge_model = load_judge(run.evaluate.judge) if run.evaluate.judge else None
    tracker = start_tracking(run, out_dir, record, "loop.evaluate", f"evaluate {run.student.name}",
                             {dataset_name(run.task): passages})
    model, tokenizer = load_student(run.student)
    baseline = BaselineCache(out_dir / "baseline.jsonl", run.student.name)
    together: dict[str, dict[str, list[dict]]] = {}
    per_passage: dict[str, list[dict[str, float]]] = {c: [] for c in run.evaluate.conditions}
    seconds: dict[str, float] = dict.fromkeys(run.evaluate.conditions, 0.0)
    for r in recorded:  # time spent before a resume
        if r["condition"] in seconds:
            seconds[r["condition"]] += r.get("seconds", 0.0)
    status = "FAILED"
    try:
        forgetting: dict[str, list[list[dict]]] = {}
        for cond in [c for c in run.evaluate.conditions if c != "base"]:
            t0 = time.perf_counter()
            matrix_file = out_dir / f"forgetting_{cond}.json"
            if all((p.id, cond) in done for p in passages) and (
                    run.task.absorb != "sequential" or matrix_file.exists()):
                if run.task.absorb == "sequential":
                    forgetting[cond] = json.loads(matrix_file.read_text())
                continue  # a resumed run: every score of this condition is recorded
            if run.task.absorb == "together":
                log.info("%s: absorbing all %d passages together", cond, len(passages))
                together[cond] = score_together(cond, passages, model, tokenizer, run,
                                                self_edits.get(cond))
            elif run.task.absorb == "sequential":
                together[cond], forgetting[cond] = score_sequential(
                    cond, passages, model, tokenizer, run, self_edits.get(cond))
                write_json_atomic(matrix_file, forgetting[cond])
            seconds[cond] += time.perf_counter() - t0
        if run.task.absorb == "single":  # many passages' adapters per batched pass
            for cond in [c for c in run.evaluate.conditions if c != "base"]:
                per = 1 if cond == "passage" else max(1, run.evaluate.samples)
                # a batch recorded in part is computed whole: every passage keeps its companions
                recorded = {p.id for p in passages if (p.id, cond) in done}
                groups = batches_to_run([p.id for p in passages],
                                        run.student.train.max_adapters // per, recorded)
                for ids in tqdm(groups, desc=cond, unit="batch", disable=not groups):
                    group = [by_id[pid] for pid in ids]
                    t0 = time.perf_counter()
                    results = score_condition_many(cond, group, model, tokenizer, run,
                                                   self_edits.get(cond, {}))
                    share = (time.perf_counter() - t0) / len(group)
                    for passage, scores in zip(group, results, strict=True):
                        if passage.id in recorded:
                            continue
                        if judge_model:
                            scores = add_verdicts(scores, judge_model, passage.title)
                        append_jsonl(out_dir / "scores.jsonl",
                                     {"context": passage.id, "condition": cond,
                                      "seconds": share, "questions": scores})
                        done[(passage.id, cond)] = scores
                        seconds[cond] += share
        for passage in tqdm(passages, desc="contexts", unit="ctx"):
            for cond in run.evaluate.conditions:
                if (passage.id, cond) in done:
                    per_passage[cond].append(passage_means(done[(passage.id, cond)]))
                    continue
                t0 = time.perf_counter()

                def compute(cond=cond, passage=passage):
                    if cond in together:
                        scores = together[cond][passage.id]
                    else:
                        scores = score_condition(cond, passage, model, tokenizer, run,
                                                 self_edits.get(cond, {}).get(passage.id))
                    if not judge_model:
                        return scores
                    return add_verdicts(scores, judge_model, passage.title)

                scores = baseline.get(passage.id, compute) if cond == "base" else compute()
                spent = time.perf_counter() - t0
                seconds[cond] += spent
                append_jsonl(out_dir / "scores.jsonl", {"context": passage.id, "condition": cond,
                                                        "seconds": spent, "questions": scores})
                per_passage[cond].append(passage_means(scores))
        summary = summarise(per_passage, run.seed, run.evaluate.resamples)
        proxy = proxy_correlations(per_passage)
        agreement = {}
        if self_edits and run.task.absorb == "single":  # the in-context proxy vs absorbing
            from loop.proxy import evaluation_agreement

            agreement = evaluation_agreement((model, tokenizer), run, passages, self_edits, done,
                                             baseline, out_dir / "proxy.jsonl")
        results = {"task": run.task.name, "data": run.task.data, "student": run.student.name,
                   "contexts": [p.id for p in passages], "n_questions": n_questions,
                   "seconds_per_context": {c: s / len(passages) for c, s in seconds.items()},
                   "summary": summary, "proxy_correlation": proxy,
                   "proxy_agreement": agreement}
        if forgetting:
            results["forgetting"] = {"mode": run.evaluate.forgetting, "matrix": forgetting}
        write_json_atomic(out_dir / "results.json", results)  # never half a results.json
        print(format_table(summary, len(passages), n_questions))
        if proxy:
            print("the cheap reward (log-prob gain over base) vs the other gains, Pearson r "
                  "across passages: " + "; ".join(
                      f"{cond} " + ", ".join(f"{m} {'-' if r is None else f'{r:.2f}'}"
                                             for m, r in rs.items()) for cond, rs in proxy.items()))
        for cond, a in agreement.items():
            print(f"{cond}: the in-context proxy (context_logprob) vs the absorbed log-prob gain "
                  f"across {a['n']} self-edits: Spearman {fmt(a['spearman'])}, Pearson "
                  f"{fmt(a['pearson'])}")
            tracker.log_metrics({f"{cond}/proxy_{k}": a[k] for k in ("spearman", "pearson")
                                 if a[k] is not None})
        means = {c: {m: e["estimate"]["mean"] for m, e in s.items() if isinstance(e, dict)}
                 for c, s in summary.items()}
        for cond, values in means.items():
            tracker.log_metrics({f"{cond}/{m}": v for m, v in values.items()})
        tracker.log_table([{"condition": c, **v} for c, v in means.items()], "results_table.json")
        tracker.log_artifact(out_dir / "results.json")
        title = (f"{run.student.name} on {Path(run.task.data).name}: {len(passages)} passages, "
                 "means with 95% intervals")
        tracker.log_artifact(plots.condition_bars(summary, out_dir / "results.png", title))
        if forgetting:
            tracker.log_artifact(plots.forgetting(forgetting, out_dir / "forgetting.png",
                                                  run.evaluate.forgetting))
        status = "FINISHED"
        return results
    finally:
        tracker.close(status)


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="evaluate")
def main(cfg) -> None:
    launch(cfg, lambda run, out_dir: evaluate(run, out_dir, command_line("loop.evaluate")))


if __name__ == "__main__":
    main()

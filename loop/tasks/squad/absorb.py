"""SQuAD's scoring: a self-edit absorbed by the student through a fresh LoRA (or every weight,
`student.train.method=full`), then the passage's questions answered closed book and graded;
many self-edits at once through batched adapters (`student.batched`); the student's baselines.
"""

from __future__ import annotations

import contextlib
import dataclasses
import tempfile
from dataclasses import dataclass
from pathlib import Path

from loop.core.checks import batched
from loop.core.config import RunConfig
from loop.core.judge import add_verdicts
from loop.core.metrics import is_log_probability
from loop.core.seeds import derive_seed
from loop.core.vllm import student_engine
from loop.tasks.squad.data import Passage
from student import batched as many
from student import vllm_eval
from student.absorb import absorbing, plan, step_count, train, train_alone
from student.config import batched_setting
from student.data import training_texts
from student.evaluate import score_questions, score_questions_many
from student.model import on_cpu

Job = tuple[Passage, list[str], int]  # (passage, the texts to absorb, the adapter's seed)


@dataclass
class SquadBatch:
    """Self-edits absorbed and scored on their passages' questions (`generate`: answers are
    generated and graded; otherwise only the gold answers' log-probabilities are read)."""

    jobs: list[Job]
    generate: bool


@dataclass
class ProxyBatch:
    """Self-edits read in context by the frozen student, nothing absorbed
    (`reward.metric=context_logprob`, loop.tasks.squad.proxy)."""

    pairs: list[tuple[Passage, str]]


def score_context(model, tokenizer, passage: Passage, run: RunConfig, judge_model,
                  generate: bool) -> list[dict]:
    """Per-question scores of the student as it is (base, or with an adapter), as dicts. With
    student.eval_backend=vllm the answers come from this process's student engine, as the
    adapters' answers do, so that a reward never compares answers of two backends. Not with
    executor=ray: the adapters answer on the workers' engines, and a third engine here for the
    baselines alone did not fit a 24 GB machine (measured: the smoke run's Ray worker was
    OOM-killed at 98 % of memory); the baselines then answer on transformers (a launch warning
    says so)."""
    qa = [(q.question, q.answer) for q in passage.questions]
    on_vllm = generate and run.student.eval_backend == "vllm" and run.executor.name == "local"
    scored = score_questions(model, tokenizer, passage.title, qa, run.student,
                             generate=generate and not on_vllm)
    if on_vllm:
        items = [(passage.title, qa)]
        predictions = vllm_eval.answers(student_engine(run), [None],
                                        [(passage.title, [q for q, _ in qa])], run.student)
        scored = vllm_eval.grade(items, predictions, [[s.logprob for s in scored]])[0]
    scores = [dataclasses.asdict(s) for s in scored]
    return add_verdicts(scores, judge_model, passage.title) if judge_model else scores


def passage_texts(passage: Passage, run: RunConfig) -> list[str]:
    """The passage alone as training data (title-prefixed, as the self-edits' sequences are)."""
    data = dataclasses.replace(run.student.data, with_passage=True)
    return training_texts("", passage.title, passage.context, data)


def absorb_and_score(model, tokenizer, passage: Passage, texts: list[str], run: RunConfig,
                     seed: int, judge_model, generate: bool,
                     phase=None) -> tuple[list[dict], list[float]]:
    """The student absorbs `texts` (a fresh LoRA, or every weight with student.train.method=full),
    is scored on the passage's questions, and is put back as it was. Returns the scores and the
    first and last training losses. `phase`: as for `absorb_and_score_many`."""
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


def train_together(run: RunConfig, device) -> bool:
    """Whether a batch's adapters also train in shared passes: student.train.batched=true, or
    auto on a GPU. On a CPU, auto trains them one at a time with PEFT (faster there: one
    self-edit's step already keeps the cores busy) and answers them together where answers are
    generated; where they are only scored (the log-probability metrics) it does everything one
    at a time (`absorb_and_score_many`). `python -m loop.bench` measures the paths."""
    setting = batched_setting(run.student.train.batched)
    return setting == "true" or (setting == "auto" and not on_cpu(device))


def absorb_and_score_many(model, tokenizer, jobs: list[tuple[Passage, list[str], int]],
                          run: RunConfig, judge_model, generate: bool,
                          phase=None) -> list[tuple[list[dict], list[float]]]:
    """`absorb_and_score` for many (passage, texts, seed) jobs: up to
    student.train.max_adapters adapters trained in the same passes over the frozen student
    (student.batched), or one at a time with PEFT (`train_together`), then scored in shared
    batches. Same results as one at a time, up to floating-point reduction order. `phase`
    (name -> context manager; loop.bench times "train" and "answer" with it) wraps each phase
    of the batched path."""
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
    as many), none for reward.baseline=none. `passage_matched`: the passage alone trained for
    `matched_baseline_steps` steps."""
    if run.reward.baseline == "none":
        return []
    generate = not is_log_probability(run.reward.metric)  # answers only where they are graded
    if run.reward.baseline == "student":
        return [cache.get(passage.id, lambda: score_context(model, tokenizer, passage, run,
                                                            judge_model, generate))]
    longer, tag = run, ""
    if run.reward.baseline == "passage_matched":
        steps = matched_baseline_steps(run)
        longer = dataclasses.replace(run, student=dataclasses.replace(
            run.student, train=dataclasses.replace(run.student.train, epochs=steps)))
        tag = f":steps{steps}"
    runs = []
    for j in range(run.reward.inner_seeds):  # seed and key of j = 0 as before inner seeds
        seed = derive_seed(run.seed, "baseline", "passage", passage.id, *([j] if j else []))
        runs.append(cache.get(f"passage:{passage.id}{tag}" + (f":{j}" if j else ""),
                              lambda seed=seed: absorb_and_score(
                                  model, tokenizer, passage, passage_texts(passage, run), longer,
                                  seed, judge_model, generate)[0]))
    return runs


def matched_baseline_steps(run: RunConfig) -> int:
    """reward.baseline=passage_matched: the steps of a self-edit whose units fill one batch,
    with its passage (`student.absorb.step_count` of two texts; with
    student.train.passage_steps=own and full-batch steps, what every non-empty self-edit
    trains). The passage alone is one sequence, one step per epoch."""
    return step_count(2, run.student)

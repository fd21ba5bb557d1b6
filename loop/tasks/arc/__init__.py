"""The ARC domain: a context is an ARC task; a self-edit is a JSON training configuration
(augmentations, loss, learning rate, epochs); the score is pass@2 success of the student after
test-time training on the task's demonstrations as configured.

    loop/tasks/arc/data.py   ArcTask, load_arc (Kaggle's challenges and solutions files)
    loop/tasks/arc/metrics.py  its metric, success (pass@2)
    loop/tasks/arc/solve.py  test-time training on a self-edit, pass@2; the in-context base
    loop/tasks/arc/rows.py   loop.evaluate's rows (base, teacher_base, teacher, oracle) and the
                             per-family table of 1D-ARC
"""

from __future__ import annotations

from pathlib import Path

from loop.core.config import ConfigError, RunConfig, TaskConfig
from loop.core.domain import Absorbed, Domain, Key, Shape, pick
from loop.core.evaluation import summarise
from loop.core.ledger import batches_to_run
from loop.tasks.arc.data import ArcTask, load_arc
from loop.tasks.arc.metrics import METRICS
from loop.tasks.arc.prompts import ARC_PROMPTS
from loop.tasks.arc.rows import add_family_differences, evaluate, family_difference_lines
from loop.tasks.arc.solve import ArcBatch, prompt, score_base, score_self_edits
from teacher.prompts import Prompt


def load(task: TaskConfig, held_out: bool = False) -> list[ArcTask]:
    return pick(load_arc(task.data, task.solutions), task, held_out)



class Arc(Domain):
    name = "arc"
    metrics = METRICS
    conditions = ("base", "teacher_base", "teacher", "oracle")
    owns = ("student.arc.", "teacher.sampling.arc_prompt")  # test-time training, its prompt
    # before them: other augmented copies, views, warm-up and teacher prompt; no clipping
    resumable_since = ("student.arc.permute_colors", "student.arc.max_grad_norm")
    metrics_note = "`success` is the percent of tasks solved (pass@2)"

    def check_overrides(self, run: RunConfig, overrides: list[str]) -> None:
        # ARC's test-time training has its own LoRA (student.arc.lora)
        for override in overrides:
            key = override.split("=", 1)[0].lstrip("+~")
            if key == "student.lora" or key.startswith("student.lora."):
                use = "student.arc.lora" + key.removeprefix("student.lora")
                raise ConfigError(f"{override}: task={run.task.name} does not read student.lora "
                                  "(the SQuAD student's adapter); ARC's test-time training "
                                  f"adapter is student.arc.lora: set {use}=... instead")

    def load(self, task: TaskConfig, held_out: bool = False) -> list[ArcTask]:
        return load(task, held_out)

    def shape(self, run: RunConfig, longest: int | None = None) -> Shape:
        a = run.student.arc  # the demonstrations as text, capped as the student's queries are
        longest = longest or a.max_tokens
        return Shape(a.max_tokens, a.max_tokens, a.lora, longest, a.batch_size * longest)

    unit, title = "task", "ARC"

    def reads(self, record: dict) -> bool:
        return "success" in record

    def row_units(self, records: list[dict], condition: str, config: dict,
                  folder: Path) -> tuple[dict[str, dict], set[str]]:
        """A task's success % over its `evaluate.samples` self-edits (`base`: its one attempt),
        for the tasks whose self-edits are all recorded; the others apart (still running)."""
        n = 1 if condition == "base" else config.get("evaluate.samples")
        if n is None:
            raise ConfigError(f"{folder} holds no run.json: how many self-edits a task has "
                              "(evaluate.samples) is not known")
        by_task: dict[str, list[float]] = {}
        for r in records:
            by_task.setdefault(r["context"], []).append(r["success"])
        whole = {task: {"success": 100 * sum(s) / len(s)} for task, s in by_task.items()
                 if len(s) == n}
        return whole, set(by_task) - set(whole)

    def summarise_units(self, units: dict[str, list[dict]], order: list[str], seed: int,
                        resamples: int) -> dict[str, dict]:
        return add_family_differences(summarise(units, seed, resamples, ("success",)), order,
                                      units, seed, resamples)

    def summary_lines(self, summary: dict[str, dict]) -> list[str]:
        return family_difference_lines(summary)

    def check_settings(self, run: RunConfig) -> None:
        if run.teacher.sampling.arc_prompt not in ARC_PROMPTS:
            raise ConfigError(f"teacher.sampling.arc_prompt must be one of {list(ARC_PROMPTS)}, "
                              f"got {run.teacher.sampling.arc_prompt!r}")

    def check(self, run: RunConfig) -> None:
        metric, baseline = run.reward.metric, run.reward.baseline
        if not (metric == "success" and baseline in ("none", "student")
                or metric == "answer_logprob" and baseline == "student"):
            raise ConfigError("task=arc scores self-edits by reward.metric=success (pass@2) "
                              "against reward.baseline=none (the paper's) or student, or by "
                              "reward.metric=answer_logprob (the gold test output's mean "
                              "log-probability per token) against reward.baseline=student; "
                              f"got reward.metric={metric} reward.baseline={baseline}")
        if run.reward.screen:
            raise ConfigError("reward.metric=context_logprob and reward.screen are SQuAD's (the "
                              "proxy reads a self-edit's text before the questions)")

    def prompt(self, run: RunConfig, context: ArcTask) -> Prompt:
        return prompt(context, run)

    def prompt_note(self, run: RunConfig) -> str:
        told = run.teacher.sampling.arc_prompt == "limits"
        return " (prompt `limits`: SEAL's with the student's limits)" if told else ""

    def baseline(self, student, run: RunConfig, context: ArcTask, cache,
                 judge_model) -> list[list[dict]]:
        if run.reward.baseline == "none":
            return []
        return [cache.get(context.id, lambda: score_base(*student, context, run))]

    def groups(self, run: RunConfig, keys: list[Key], size: int, done) -> list[list[Key]]:
        ids = dict.fromkeys(cid for cid, _, _ in keys)  # one task's self-edits per batch
        return [g for c in ids for g in batches_to_run([k for k in keys if k[0] == c], size, done)]

    def batch(self, run: RunConfig, group: list[Key], contexts: dict, texts: dict,
              seeds: dict[Key, int]) -> ArcBatch:
        return ArcBatch(contexts[group[0][0]], [texts[(cid, i)] for cid, i, _ in group],
                        [seeds[k] for k in group])

    def score_batch(self, student, run: RunConfig, judge_model,
                    item: ArcBatch) -> list[Absorbed]:
        return score_self_edits(*student, item.task, item.texts, run, item.seeds)

    def round_metrics(self, evals: list) -> dict[str, float]:
        """The fractions of a round's self-edits that failed before training, invalid or over
        the step budget (`student.arc.max_steps`): what the teacher's M-step should bring down."""
        if not evals:
            return {}
        why = [e.failure or "" for e in evals]
        return {"student/invalid_frac": sum(w.startswith("invalid") for w in why) / len(why),
                "student/over_budget_frac": sum(w.startswith("over budget") for w in why) / len(why)}

    def evaluate(self, run: RunConfig, out_dir: Path, command: str) -> dict:
        return evaluate(run, out_dir, command, self)


DOMAIN = Arc()

"""The SQuAD domain: a context is a passage with questions; a self-edit is text the student
absorbs through a fresh LoRA; the score is the student's answers to the questions, closed book.

    loop/tasks/squad/data.py    Passage, Question, load_squad (the file format)
    loop/tasks/squad/absorb.py  absorbing self-edits and scoring the questions; the baselines
    loop/tasks/squad/metrics.py its metrics (EM, F1, contains, log-prob, judge), passage means
    loop/tasks/squad/proxy.py   the cheap reward (the self-edit in context) and its honesty check
    loop/tasks/squad/rows.py    loop.evaluate's rows (base, passage, passage_matched,
                                teacher_base, teacher, external) in the single, together and
                                sequential settings
"""

from __future__ import annotations

from pathlib import Path

import loop.tasks.squad.absorb as absorb
from loop.core.config import ConfigError, RunConfig, TaskConfig
from loop.core.domain import Absorbed, Domain, Key, Shape, pick
from loop.core.evaluation import summarise
from loop.core.ledger import batches_to_run
from loop.core.metrics import is_log_probability
from loop.tasks.squad import proxy
from loop.tasks.squad.absorb import ProxyBatch, SquadBatch, baseline_scores
from loop.tasks.squad.data import Passage, load_squad
from loop.tasks.squad.metrics import METRICS, QUESTION_METRICS, passage_means
from loop.tasks.squad.prompts import PROMPTS, self_edit_prompt
from loop.tasks.squad.proxy import context_rows
from loop.tasks.squad.rows import evaluate, matched_row
from student.data import training_texts
from teacher.prompts import Prompt

PASSAGE_TOKENS = 1024  # a SQuAD passage with its title and prompt template: the longest
# title + passage in data/squad (train_pool, eval200) is 624 tokens by Qwen2.5's tokenizer
TITLE_TOKENS = 64  # a passage's title, prefixed to each unit of a self-edit


def prompt(run: RunConfig, passage: Passage) -> Prompt:
    """What the teacher reads for a passage: the prompt `teacher.sampling.prompt` names."""
    return self_edit_prompt(run.teacher.sampling.prompt, passage.title, passage.context)


def load(task: TaskConfig, held_out: bool = False) -> list[Passage]:
    return pick(load_squad(task.data), task, held_out)


class Squad(Domain):
    name = "squad"
    metrics = METRICS
    conditions = ("base", "passage", "passage_matched", "teacher_base", "teacher", "external")
    # its teacher writes self-edits: a model others can sample (loop/tasks/squad/teacher_model.py)
    teacher_model = "loop.tasks.squad.teacher_model"
    owns = ("student.lora.", "student.data.")  # the passage absorber's adapter and data
    # before it, the self-qa cue ended the user's message instead of opening the teacher's turn
    resumable_since = ("student.train.passage_steps",)
    metrics_note = ("EM, F1 and contains are percents of questions, logprob is nats per "
                    "gold-answer token")

    def check_settings(self, run: RunConfig) -> None:
        if run.teacher.sampling.prompt not in PROMPTS:
            raise ConfigError(f"teacher.sampling.prompt must be one of {sorted(PROMPTS)}, got "
                              f"{run.teacher.sampling.prompt!r}")
        if run.student.train.passage_steps == "own" and run.task.absorb == "together":
            raise ConfigError("student.train.passage_steps=own trains each passage in steps of "
                              "its own beside its self-edits; task.absorb=together absorbs "
                              "every passage in one run: use passage_steps=shared there")
        if run.evaluate.absorb_seed and run.task.absorb != "single":
            raise ConfigError("evaluate.absorb_seed redraws the adapters of task.absorb=single; "
                              f"task.absorb={run.task.absorb} has one run of its own")
        if "passage_matched" in run.evaluate.conditions:
            if matched_row(run.evaluate.conditions) is None:
                raise ConfigError("evaluate.conditions: passage_matched trains the passage for as "
                                  "many steps as a self-edit row's; add teacher, teacher_base "
                                  "or external")
            if run.task.absorb != "single":
                raise ConfigError("evaluate.conditions: passage_matched is a row of "
                                  f"task.absorb=single, not {run.task.absorb}")

    def prompt_note(self, run: RunConfig) -> str:
        return f" (prompt `{run.teacher.sampling.prompt}`)"

    def load(self, task: TaskConfig, held_out: bool = False) -> list[Passage]:
        return load(task, held_out)

    def shape(self, run: RunConfig, longest: int | None = None) -> Shape:
        s, new = run.student, run.teacher.sampling.max_new_tokens
        # the passage is one sequence; a self-edit's units (lines) are one each, with a title
        longest = longest or min(s.data.max_length, max(PASSAGE_TOKENS, new + TITLE_TOKENS))
        # every sequence of one self-edit: its text (titles at most double it) and the passage
        per_adapter = min(s.train.batch_size * longest, 2 * new + PASSAGE_TOKENS)
        return Shape(PASSAGE_TOKENS, PASSAGE_TOKENS + s.eval.max_new_tokens, s.lora, longest,
                     per_adapter)

    unit, title = "passage", "SQuAD"

    def reads(self, record: dict) -> bool:
        return "questions" in record

    def row_units(self, records: list[dict], condition: str, config: dict,
                  folder: Path) -> tuple[dict[str, dict], set[str]]:
        return {r["context"]: passage_means(r["questions"]) for r in records}, set()

    def summarise_units(self, units: dict[str, list[dict]], order: list[str], seed: int,
                        resamples: int) -> dict[str, dict]:
        return summarise(units, seed, resamples, QUESTION_METRICS)

    def check(self, run: RunConfig) -> None:
        if run.reward.metric == "success":
            raise ConfigError("reward.metric=success is ARC's; pick another metric for "
                              f"task={run.task.name}")

    def prompt(self, run: RunConfig, context: Passage) -> Prompt:
        return prompt(run, context)

    def baseline(self, student, run: RunConfig, context: Passage, cache,
                 judge_model) -> list[list[dict]]:
        return baseline_scores(*student, context, run, cache, judge_model)

    def groups(self, run: RunConfig, keys: list[Key], size: int, done) -> list[list[Key]]:
        return batches_to_run(keys, size, done)  # across passages

    def batch(self, run: RunConfig, group: list[Key], contexts: dict, texts: dict,
              seeds: dict[Key, int]) -> SquadBatch | ProxyBatch:
        if run.reward.metric == "context_logprob":
            return ProxyBatch([(contexts[cid], texts[(cid, i)]) for cid, i, _ in group])
        return SquadBatch([(contexts[cid], training_texts(texts[(cid, i)], contexts[cid].title,
                                                          contexts[cid].context, run.student.data),
                            seeds[(cid, i, j)]) for cid, i, j in group],
                          not is_log_probability(run.reward.metric))

    def score_batch(self, student, run: RunConfig, judge_model,
                    item: SquadBatch | ProxyBatch) -> list[Absorbed]:
        model, tokenizer = student
        if isinstance(item, ProxyBatch):  # read in context, nothing absorbed (loop.tasks.squad.proxy)
            return [Absorbed(context_rows(model, tokenizer, passage, text, run.student), [])
                    for passage, text in item.pairs]
        return [Absorbed(*res) for res in absorb.absorb_and_score_many(
            model, tokenizer, item.jobs, run, judge_model, item.generate)]

    def proxies(self, student, run: RunConfig, contexts: list, edits: dict, cache,
                path: Path) -> tuple[dict, set | None]:
        """The proxy of every self-edit: the screen (reward.screen) and its honesty check."""
        if run.reward.metric == "context_logprob":
            return {}, None
        proxies = proxy.round_proxies(student, run, contexts, edits, cache, path)
        screened = (proxy.screened(proxies, contexts, run.loop.k, run.reward.screen)
                    if run.reward.screen else None)
        return proxies, screened

    def evaluate(self, run: RunConfig, out_dir: Path, command: str) -> dict:
        return evaluate(run, out_dir, command, self)


DOMAIN = Squad()

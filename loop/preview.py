"""The smallest real piece of the method, run by `make run` until the loop lands.

Loads both models; the teacher reads one passage and writes implications (a self-edit); the
untrained student answers the passage's first questions closed book. Nothing is trained yet.
"""

from __future__ import annotations

import time

from loop.config import RunConfig
from loop.tasks import load_squad
from student.evaluate import answer
from student.model import load_student
from student.prompts import answer_prompt
from teacher.generate import sample
from teacher.model import load_teacher
from teacher.prompts import self_edit_prompt

N_QUESTIONS = 3
MAX_SELF_EDIT_TOKENS = 128  # the loop's budget is a config value; a preview stays short


def run(run: RunConfig) -> None:
    passage = load_squad(run.task.data)[0]
    t0 = time.perf_counter()
    teacher, t_tok = load_teacher(run.teacher)
    student, s_tok = load_student(run.student)
    print(f"loaded teacher {run.teacher.name} ({type(teacher).__name__}) and student "
          f"{run.student.name} ({type(student).__name__}) in {time.perf_counter() - t0:.1f} s")

    t0 = time.perf_counter()
    [self_edit] = sample(teacher, t_tok, [self_edit_prompt("implications", passage.title, passage.context)],
                         instruct=run.teacher.instruct, max_new_tokens=MAX_SELF_EDIT_TOKENS,
                         seed=run.seed)
    print(f"\n== passage {passage.id}: {passage.title} ==\n{passage.context[:300]}...")
    print(f"\n== teacher self-edit (implications, {time.perf_counter() - t0:.1f} s) ==\n{self_edit}")

    questions = passage.questions[:N_QUESTIONS]
    t0 = time.perf_counter()
    answers = answer(student, s_tok, [answer_prompt(passage.title, q.question) for q in questions],
                     instruct=run.student.instruct, max_new_tokens=32)
    print(f"\n== untrained student, closed book ({time.perf_counter() - t0:.1f} s) ==")
    for q, a in zip(questions, answers, strict=True):
        print(f"Q: {q.question}\n   student: {a}\n   gold:    {q.answer}")

"""ARC: grids as text, augmentation inverses, self-edit JSON validation, voting, training tasks,
and test-time training on a tiny student (the real code path, random weights)."""

from __future__ import annotations

import dataclasses
import json
import random
import re

import pytest

from loop.config import PROJECT_ROOT
from loop.tasks import DataError, load_arc
from student.arc import augment, grids
from student.arc.selfedit import TTTConfig, parse, to_json
from student.config import ArcSettings

ARC = PROJECT_ROOT / "data" / "arc"
TRAIN = ARC / "arc-agi_training_challenges_filtered_1B_training_set.json"
EVAL = ARC / "arc-agi_evaluation_challenges_filtered_1B_eval_set.json"
LIMITS = ((1e-6, 1e-2), 10)


def random_grid(rng: random.Random, h: int | None = None, w: int | None = None):
    h, w = h or rng.randint(1, 7), w or rng.randint(1, 7)
    return [[rng.randint(0, 9) for _ in range(w)] for _ in range(h)]


def every_transform():
    return [t for fam in augment.FAMILIES for t in augment.family(fam, seed=3)] + augment.VIEWS


# ---- data -----------------------------------------------------------------------------------

def test_the_papers_task_files_load_with_their_solutions():
    train, evals = load_arc(TRAIN), load_arc(EVAL)
    assert len(train) == 12 and len(evals) == 10
    task = {t.id: t for t in train}["44f52bb0"]
    assert len(task.train) == 6 and len(task.test) == 2  # two test inputs, two solutions
    assert all(ex.output for ex in task.test)


def test_a_bad_grid_names_the_file_the_task_and_the_grid(tmp_path):
    challenges = tmp_path / "mine_challenges.json"
    challenges.write_text(json.dumps({"t1": {"train": [{"input": [[1, 2], [3]], "output": [[1]]}],
                                             "test": [{"input": [[1]]}]}}))
    (tmp_path / "mine_solutions.json").write_text(json.dumps({"t1": [[[1]]]}))
    with pytest.raises(DataError, match=r"mine_challenges.json: task t1: train 0 input: row 1 "
                                        r"has 1 cells, row 0 has 2"):
        load_arc(challenges)
    challenges.write_text(json.dumps({"t1": {"train": [{"input": [[1]], "output": [[10]]}],
                                             "test": [{"input": [[1]]}]}}))
    with pytest.raises(DataError, match="holds 10; colours are integers 0-9"):
        load_arc(challenges)
    with pytest.raises(DataError, match="cannot guess its solutions file"):
        load_arc(tmp_path / "tasks.json")


# ---- grids as text --------------------------------------------------------------------------

def test_grid_text_round_trips_on_every_grid_of_the_papers_tasks():
    for path in (TRAIN, EVAL):
        for task in load_arc(path):
            for ex in task.train + task.test:
                for g in (ex.input, ex.output):
                    assert grids.parse(grids.text(g)) == g
    assert grids.text([[0, 1], [2, 3]]) == "01\n23"


@pytest.mark.parametrize("answer", ["", "12\n3", "1a\n22", "[[1, 2]]", "١٢\n٣٤", "1 2\n3 4",
                                    "9" * 31 * 31])
def test_parse_turns_anything_but_a_rectangle_of_digits_into_none(answer):
    assert grids.parse(answer) is None


def test_parse_ignores_surrounding_space_and_blank_lines():
    assert grids.parse("\n 12 \n\n34\n") == [[1, 2], [3, 4]]


# ---- augmentations --------------------------------------------------------------------------

def test_every_transform_is_undone_by_its_inverse():
    rng = random.Random(0)
    shapes = [(1, 1), (1, 5), (5, 1), (2, 3), (3, 3), (4, 7), (7, 4)]
    for t in every_transform():
        for h, w in shapes:
            g = random_grid(rng, h, w)
            copy = [list(r) for r in g]
            assert t.inverse(t(g)) == g, t.name
            assert g == copy, t.name  # pure: the input grid is never changed


def test_transforms_by_hand():
    g = [[1, 2], [3, 4]]
    assert augment.ROT90(g) == [[2, 4], [1, 3]]  # counter-clockwise, as numpy.rot90
    assert augment.ROT270(g) == [[3, 1], [4, 2]]
    assert augment.ROT180(g) == [[4, 3], [2, 1]]
    assert augment.FLIP_ROWS(g) == [[3, 4], [1, 2]] and augment.FLIP_COLS(g) == [[2, 1], [4, 3]]
    assert augment.TRANSPOSE(g) == [[1, 3], [2, 4]]
    assert augment.REFLECT[0](g) == [[1, 2], [3, 4], [3, 4], [1, 2]]
    assert augment.REFLECT[3](g) == [[2, 1, 1, 2], [4, 3, 3, 4]]
    assert augment.RESOLUTION2([[5]]) == [[5, 5], [5, 5]]
    assert augment.HEIGHT2(g) == [[1, 2], [1, 2], [3, 4], [3, 4]]
    assert augment.REPEAT[2]([[7, 8]]) == [[7, 8, 7, 8], [7, 8, 7, 8]]
    assert augment.translate(1, 0)([[1], [2], [3]]) == [[3], [1], [2]]  # cyclic
    assert augment.chain(augment.ROT90, augment.RESOLUTION2)([[1, 2]]) == [[2, 2], [2, 2],
                                                                           [1, 1], [1, 1]]


def test_inverse_of_a_shape_the_transform_cannot_produce_is_none():
    odd = [[1, 2, 3]]
    for t in (augment.REFLECT[0], augment.RESOLUTION2, augment.HEIGHT2, augment.REPEAT[0]):
        assert t.inverse(odd) is None, t.name
    assert augment.chain(augment.ROT90, augment.RESOLUTION2).inverse(odd) is None


# ---- self-edit JSON -------------------------------------------------------------------------

GOOD = {"data_generation": {"use_basic_augmentations": True, "use_size_augmentations": False,
                            "use_chain_augmentations": True, "use_repeat_augmentations": False},
        "training": {"strategy": "train_using_output_tokens", "learning_rate": 1e-4,
                     "num_train_epochs": 2}}


def edited(**training):
    return json.dumps({**GOOD, "training": {**GOOD["training"], **training}})


def test_a_valid_self_edit_parses_also_inside_prose_or_a_code_fence():
    want = TTTConfig(("basic", "chain"), "output", 1e-4, 2)
    assert parse(json.dumps(GOOD), *LIMITS).config == want
    assert parse(f"Sure! ```json\n{json.dumps(GOOD)}\n``` Good luck.", *LIMITS).config == want
    assert parse(to_json(want), *LIMITS).config == want
    assert parse(edited(num_train_epochs=3.0), *LIMITS).config.epochs == 3


@pytest.mark.parametrize("text, reason", [
    ("I would use augmentations.", "no JSON object"),
    ("[1, 2]", "no JSON object"),
    ('{"training": {}}', "'data_generation' missing"),
    (json.dumps({"data_generation": GOOD["data_generation"]}), "'training' missing"),
    (json.dumps({**GOOD, "data_generation": {**GOOD["data_generation"],
                                             "use_size_augmentations": "yes"}}),
     "use_size_augmentations must be true or false"),
    (edited(strategy="train_on_everything"), "training.strategy must be one of"),
    (edited(learning_rate="1e-4"), "learning_rate must be a number"),
    (edited(learning_rate=1.0), r"learning_rate 1 outside \[1e-06, 0.01\]"),
    (edited(learning_rate=float("nan")), "learning_rate must be a number"),
    (edited(num_train_epochs=0), r"num_train_epochs 0 outside \[1, 10\]"),
    (edited(num_train_epochs=2.5), "num_train_epochs must be an integer"),
    (edited(num_train_epochs=True), "num_train_epochs must be an integer"),
    ("{" * 100000, "longer than 4096 characters"),
    ("[" * 3000 + "]" * 3000, "longer than 4096"),
])
def test_an_invalid_self_edit_is_a_reason_never_an_exception(text, reason):
    parsed = parse(text, *LIMITS)
    assert parsed.config is None
    assert re.search(reason, parsed.reason), parsed.reason


def test_deeply_nested_json_within_the_cap_is_a_reason_not_a_crash():
    assert parse("[" * 2000 + "]" * 2000, *LIMITS).reason == "no JSON object"


# ---- voting ---------------------------------------------------------------------------------

def test_vote_by_hand():
    from student.arc.ttt import vote

    a, b, c = [[1]], [[2]], [[3]]
    assert vote([a, b, a, None, c, b, a]) == [a, b]
    assert vote([c, b, b, c]) == [c, b]  # tie: the first seen (identity view first) wins
    assert vote([None, None]) == [] and vote([b]) == [b]


# ---- training tasks -------------------------------------------------------------------------

DEMOS = [([[1, 0]], [[0, 1]]), ([[2, 0]], [[0, 2]]), ([[3, 3]], [[3, 3]])]


def test_leave_out_tasks_by_hand():
    from student.arc.ttt import training_tasks

    plain = ArcSettings(leave_out=[1], permute=False)
    none = TTTConfig((), "all", 1e-4, 1)
    tasks = training_tasks(DEMOS, none, plain, seed=0)
    assert [(len(q.demos), q.input) for q in tasks] == [(2, [[1, 0]]), (2, [[2, 0]]),
                                                        (2, [[3, 3]])]
    assert tasks[0].demos == [DEMOS[1], DEMOS[2]]
    two = training_tasks(DEMOS, none, ArcSettings(leave_out=[1, 2], permute=False), seed=0)
    assert len(two) == 3 + 3 * 2  # leave-two-out: each query, one more demo removed
    basic = TTTConfig(("basic",), "all", 1e-4, 1)
    aug = training_tasks(DEMOS, basic, plain, seed=0)
    assert len(aug) > len(tasks) and len({repr(q) for q in aug}) == len(aug)  # no duplicates
    assert aug == training_tasks(DEMOS, basic, plain, seed=0)  # deterministic
    capped = training_tasks(DEMOS, basic, ArcSettings(leave_out=[1], max_tasks=5), seed=0)
    assert len(capped) == 5


def test_output_only_loss_masks_everything_before_the_answer_grid(tiny_llama):
    from transformers import AutoTokenizer

    from student.arc.ttt import Query, encode
    from student.data import IGNORE

    tok = AutoTokenizer.from_pretrained(tiny_llama)
    q = Query(DEMOS[:2], [[3, 3]], [[3, 3], [4, 4]])
    ids, labels = encode(tok, q, instruct=True, loss="output")
    kept = [t for t, lab in zip(ids, labels, strict=True) if lab != IGNORE]
    assert tok.decode(kept).startswith("33\n44<|im_end|>")
    assert labels[: len(ids) - len(kept)] == [IGNORE] * (len(ids) - len(kept))
    all_ids, all_labels = encode(tok, q, instruct=True, loss="all")
    assert all_ids == ids and all_labels == ids


# ---- test-time training on a tiny student ---------------------------------------------------

def test_absorb_and_solve_trains_answers_and_leaves_the_base_as_it_was(tiny_llama):
    import torch

    from student.arc.ttt import absorb_and_solve, solve
    from student.model import load_student
    from tests.test_models import tiny_student

    model, tok = load_student(tiny_student(tiny_llama))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    settings = ArcSettings(leave_out=[1], batch_size=2, warmup_steps=1, max_steps=40)
    tests = [([[4, 0]], [[0, 4]])]
    edit = to_json(TTTConfig(("basic",), "output", 5e-3, 2))
    result = absorb_and_solve(model, tok, DEMOS, tests, edit, settings, True, seed=0)
    assert result.failure is None and result.tasks > 3 and result.steps == len(result.losses)
    assert result.losses[-1] < result.losses[0]
    assert len(result.attempts) == 1 and len(result.attempts[0]) <= 2
    assert [len(a) for a in result.answers] == [6]  # every view's raw answer is kept
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())

    over = absorb_and_solve(model, tok, DEMOS, tests, to_json(TTTConfig(("basic",), "all", 1e-4,
                                                                        10)), settings, True, 0)
    assert not over.success and over.failure.startswith("over budget") and not over.losses
    bad = absorb_and_solve(model, tok, DEMOS, tests, "use rotations", settings, True, 0)
    assert not bad.success and bad.failure == "invalid self-edit: no JSON object"
    base = solve(model, tok, DEMOS, tests, settings, True)
    assert base.failure is None and isinstance(base.success, bool)
    # no view fits a tiny token budget: no attempt, no generation, no exception
    tight = solve(model, tok, DEMOS, tests, ArcSettings(max_tokens=16), True)
    assert not tight.success and tight.attempts == [[]] and tight.answers == [[]]


def test_self_edits_trained_together_equal_one_at_a_time(tiny_llama):
    from student.arc.ttt import absorb_and_solve, absorb_and_solve_many
    from student.model import load_student
    from tests.test_models import tiny_student

    model, tok = load_student(tiny_student(tiny_llama))
    settings = ArcSettings(leave_out=[1], batch_size=2, warmup_steps=1, max_steps=40)
    tests = [([[4, 0]], [[0, 4]]), ([[5, 5]], [[5, 5]])]
    edits = [to_json(TTTConfig(("basic",), "output", 5e-3, 2)), "use rotations",
             to_json(TTTConfig(("basic",), "all", 1e-4, 10)),  # over budget
             to_json(TTTConfig(("basic", "size"), "all", 1e-3, 1))]
    seeds = [0, 1, 2, 3]
    together = absorb_and_solve_many(model, tok, DEMOS, tests, edits, settings, True, seeds,
                                     max_adapters=8)
    for edit, seed, got in zip(edits, seeds, together, strict=True):
        want = absorb_and_solve(model, tok, DEMOS, tests, edit, settings, True, seed)
        assert got.failure == want.failure and got.steps == want.steps
        assert got.losses == pytest.approx(want.losses, abs=1e-4)
        assert got.answers == want.answers and got.attempts == want.attempts
    assert [r.failure is None for r in together] == [True, False, False, True]


def test_a_bad_oracle_setting_is_a_config_error_at_launch(tiny_llama, tiny_qwen2, tmp_path):
    from loop.arc import oracle_text
    from loop.config import ConfigError

    run = arc_run(tiny_llama, tiny_qwen2, tmp_path)
    assert parse(oracle_text(run), *LIMITS).config == TTTConfig(
        ("basic", "size", "chain", "repeat"), "output", 1e-4, 2)
    bad = dataclasses.replace(run, student=dataclasses.replace(run.student, arc=dataclasses.replace(
        run.student.arc, oracle=dataclasses.replace(run.student.arc.oracle, loss="outputs"))))
    with pytest.raises(ConfigError, match="student.arc.oracle: families must be among"):
        oracle_text(bad)


# ---- the loop and loop.evaluate with task=arc -----------------------------------------------

def arc_run(tiny_llama, tiny_qwen2, tmp_path, *more):
    from tests.conftest import compose_run

    return compose_run("task=arc", "experiment=smoke", f"student.path={tiny_llama}",
                       f"teacher.path={tiny_qwen2}", "tracking.enabled=false",
                       "task.ids=[6150a2bd]", "task.eval_ids=[66e6c45b]",
                       "student.arc.max_tasks=6", "student.arc.max_steps=8",
                       "student.arc.warmup_steps=1", "teacher.sampling.max_new_tokens=16", *more)


def test_arc_inner_loop_scores_valid_self_edits_and_records_why_others_failed(
        tiny_llama, tiny_qwen2, tmp_path):
    from loop import outer
    from loop.baseline import BaselineCache
    from loop.ledger import Ledger
    from loop.tasks import load_contexts
    from student.model import load_student

    run = arc_run(tiny_llama, tiny_qwen2, tmp_path)
    [task] = load_contexts(run.task)
    texts = [to_json(TTTConfig(("basic",), "output", 1e-3, 1)), "not json",
             to_json(TTTConfig(("basic", "size"), "all", 1e-3, 9))]  # 9 epochs: over budget
    edits = {(task.id, i): outer.SelfEdit(task.id, i, i, t, outer.text_hash(t), 0.0)
             for i, t in enumerate(texts)}
    run = dataclasses.replace(run, loop=dataclasses.replace(run.loop, k=3))
    student = load_student(run.student)
    ledger = Ledger(tmp_path / "ledger.jsonl")
    evals = outer.inner_round(student, run, 0, [task], edits, ledger,
                              BaselineCache(tmp_path / "b.jsonl", "tiny"), None)
    assert [e.failure for e in evals][1:] == ["invalid self-edit: no JSON object",
                                              "over budget: 27 steps > student.arc.max_steps=8"]
    assert evals[0].failure is None and len(evals[0].train_loss) == 2
    assert all(e.score in (0.0, 100.0) and e.reward == e.score and e.baseline == 0.0
               for e in evals)  # reward.baseline=none: the reward is the success itself
    assert len(Ledger(tmp_path / "ledger.jsonl").done) == 3


def test_arc_loop_and_evaluation_run_end_to_end(tiny_llama, tiny_qwen2, tmp_path):
    from loop import outer
    from loop.evaluate import evaluate

    # top_fraction keeps one self-edit per round whatever its reward (threshold would keep
    # none of a random teacher's), so the ARC M-step runs and leaves a teacher adapter. A
    # random teacher never ends a text: 96 tokens give its cut samples complete lines to keep
    run = arc_run(tiny_llama, tiny_qwen2, tmp_path, "reward.filter=top_fraction",
                  "reward.fraction=0.5", "teacher.sampling.max_new_tokens=96")
    results = outer.run(run, tmp_path / "run")
    assert [len(r["rewards"]) for r in results["rounds"]] == [2, 2]
    assert results["final_adapter"] == "round_1/teacher_adapter"
    ledger = [json.loads(x) for x in (tmp_path / "run" / "ledger.jsonl").read_text().splitlines()]
    assert all(x["metric"] == "success" for x in ledger)
    kept = [sum(x["kept"] for x in json.loads(
        (tmp_path / "run" / f"round_{r}" / "self_edit_table.json").read_text())) for r in (0, 1)]
    # round 1 trained the final adapter on one; round 0's samples here are single cut lines,
    # which have nothing to train on and are never kept
    assert kept == [0, 1]

    ev = arc_run(tiny_llama, tiny_qwen2, tmp_path, "evaluate.samples=2",
                 "evaluate.conditions=[base,teacher_base,teacher,oracle]",
                 f"teacher.adapter={tmp_path / 'run'}")
    # what conf/evaluate.yaml does: the task's held-out tasks
    ev = dataclasses.replace(ev, task=dataclasses.replace(ev.task, data=ev.task.eval_data,
                                                          ids=None))
    out = tmp_path / "eval"
    res = evaluate(ev, out)
    assert res["contexts"] == ["66e6c45b"] and list(res["summary"]) == [
        "base", "teacher_base", "teacher", "oracle"]
    assert {"vs_base", "vs_teacher_base", "vs_teacher"} <= set(res["summary"]["oracle"]["success"])
    rows = [json.loads(x) for x in (out / "scores.jsonl").read_text().splitlines()]
    assert sorted((r["condition"], r["sample"]) for r in rows if r["condition"] != "base") == [
        ("oracle", 0), ("oracle", 1), ("teacher", 0), ("teacher", 1), ("teacher_base", 0),
        ("teacher_base", 1)]
    edits = [json.loads(x) for x in (out / "self_edits.jsonl").read_text().splitlines()]
    assert {e["condition"] for e in edits} == {"teacher_base", "teacher"}
    assert all(len(r["answers"]) == 1 for r in rows if not r["failure"])  # one test input
    oracle = [r for r in rows if r["condition"] == "oracle"]
    teacher = [r for r in rows if r["condition"] == "teacher_base"]
    assert [r["seed"] for r in oracle] == [r["seed"] for r in teacher]  # paired seeds
    again = evaluate(dataclasses.replace(ev, resume=str(out)), out)
    assert again["summary"] == res["summary"]  # read back, nothing recomputed
    assert len((out / "scores.jsonl").read_text().splitlines()) == len(rows)

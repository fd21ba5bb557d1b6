"""`python -m loop.compare`: rows of several evaluation folders, paired by passage (hand-made folders)."""

import json

import pytest

from loop.compare import compare, main, parse_row, reward_agreement, rewards_report, sample_means
from loop.core.errors import ConfigError


def q(logprob, contains, f1=0.0, sample=0):
    return {"exact_match": 0.0, "f1": f1, "contains": contains, "logprob": logprob,
            "sample": sample}


def write(folder, rows, config=None):
    folder.mkdir()
    with open(folder / "scores.jsonl", "w") as f:
        for context, condition, questions in rows:
            f.write(json.dumps({"context": context, "condition": condition,
                                "questions": questions}) + "\n")
    if config is not None:
        (folder / "run.json").write_text(json.dumps({"command": "", "config": config}))
    return folder


CONFIG = {"seed": 0, "student.name": "smollm135m", "student.path": None, "task.data": "d.json",
          "task.split": "dev", "teacher.sampling.prompt": "implications"}


@pytest.fixture
def folders(tmp_path):
    a = write(tmp_path / "a", [("p0", "passage", [q(-4.0, 0.0), q(-2.0, 1.0)]),
                               ("p1", "passage", [q(-3.0, 0.0)]),
                               ("p0", "teacher_base", [q(-3.0, 1.0), q(-2.0, 1.0)]),
                               ("p1", "teacher_base", [q(-3.5, 0.0)])], CONFIG)
    b = write(tmp_path / "b=x", [("p1", "teacher_base", [q(-1.0, 1.0)]),  # another order
                                 ("p0", "teacher_base", [q(-2.0, 0.0), q(-2.0, 0.0)])],
              {**CONFIG, "teacher.sampling.prompt": "rewrite", "student.path": "/other/cache"})
    return a, b


def test_rows_of_two_folders_are_paired_by_passage(folders):
    a, b = folders
    summary, n, differ, _ = compare([f"{a}:passage", f"{a}:teacher_base=long",
                                     f"{b}:teacher_base=rewrite"], resamples=2000)
    # a bundled student's path is the machine's cache: listed, not refused
    assert n == 2 and differ == ["student.path", "teacher.sampling.prompt"]
    # by hand: passage logprob per passage -3.0, -3.0; long -2.5, -3.5; rewrite -2.0, -1.0
    assert summary["long"]["logprob"]["vs_a:passage"]["mean"] == pytest.approx(0.0)
    # paired by passage, rewrite - long is 0.5 (p0) and 2.5 (p1): the interval spans both
    # (paired by position, b's records in its own order, it would be 1.5 and 1.5)
    vs = summary["rewrite"]["logprob"]["vs_long"]
    assert (vs["mean"], vs["low"], vs["high"]) == pytest.approx((1.5, 0.5, 2.5))
    assert summary["rewrite"]["contains"]["estimate"]["mean"] == pytest.approx(50.0)


def test_a_row_names_its_folder_up_to_the_last_colon():
    assert parse_row("out/lr=3e-4:teacher_base=mine") == (
        parse_row("out/lr=3e-4:teacher_base")[0], "teacher_base", "mine")
    assert parse_row("out/x:passage")[2] == "x:passage"
    with pytest.raises(ConfigError, match="a row is"):
        parse_row("out/x")


def test_rows_that_would_not_pair_are_refused(folders, tmp_path, capsys):
    a, b = folders
    c = write(tmp_path / "c", [("p0", "teacher_base", [q(-1.0, 1.0)])], CONFIG)
    d = write(tmp_path / "d", [("p0", "passage", [q(-1.0, 1.0)]), ("p1", "passage", [q(0, 0)])],
              {**CONFIG, "seed": 1})
    with pytest.raises(ConfigError, match="different passages or tasks.*--shared"):
        compare([f"{a}:passage", f"{c}:teacher_base"])
    with pytest.raises(ConfigError, match="differ in seed"):
        compare([f"{a}:passage", f"{d}:passage=other"])
    with pytest.raises(ConfigError, match="records no 'teacher' row"):
        compare([f"{b}:teacher"])
    with pytest.raises(ConfigError, match="labelled"):
        compare([f"{a}:passage", f"{a}:passage"])
    with pytest.raises(ConfigError, match="not a loop.evaluate folder"):
        compare([f"{tmp_path}:passage"])
    assert main([f"{a}:passage", f"{c}:teacher_base"]) == 2
    assert "error: rows" in capsys.readouterr().err
    assert main([f"{a}:passage", f"{b}:teacher_base"]) == 0
    out = capsys.readouterr().out
    assert "2 passages" in out and "differ in: student.path, teacher.sampling.prompt" in out


def test_a_torn_last_line_is_left_out_and_left_in_place(folders):
    a, _ = folders
    with open(a / "scores.jsonl", "a") as f:
        f.write('{"context": "p2", "condition": "pass')  # an evaluation still writing
    before = (a / "scores.jsonl").read_bytes()
    assert compare([f"{a}:passage"])[1] == 2
    assert (a / "scores.jsonl").read_bytes() == before


def test_reward_agreement_counts_ties_and_pairs_ordered_alike(tmp_path, capsys):
    # p0: samples 0 < 1 on logprob and on f1, tied on contains; p1: logprob says 0 > 1, f1 1 > 0
    a = write(tmp_path / "a", [("p0", "teacher_base", [q(-3.0, 0.0, 0.1, 0), q(-2.0, 0.0, 0.5, 1)]),
                               ("p1", "teacher_base", [q(-1.0, 1.0, 0.0, 0), q(-2.0, 0.0, 0.2, 1)])])
    out = reward_agreement([sample_means(a, "teacher_base")])
    assert out["n_pairs"]["all"] == 2
    assert out["tied"] == {"logprob": 0.0, "f1": 0.0, "contains": 0.5}
    assert out["alike"]["logprob~f1"] == 0.5
    assert out["alike"]["logprob~contains"] == 1.0  # p1 only: both say sample 0
    assert out["both_ordered"]["f1~contains"] == 1
    assert out["alike"]["f1~contains"] == 0.0
    assert "logprob~f1 50% of 2" in rewards_report([f"{a}:teacher_base"])
    with pytest.raises(ConfigError, match="named twice"):
        rewards_report([f"{a}:teacher_base", f"{a}:teacher_base=again"])
    one = write(tmp_path / "one", [("p0", "passage", [q(-1.0, 1.0)])])
    assert main(["--rewards", f"{one}:passage"]) == 2
    assert "no passage has two self-edits" in capsys.readouterr().err


def write_arc(folder, rows, samples):
    """An ARC evaluation folder: rows (task, condition, sample, success) of `samples` per task."""
    folder.mkdir()
    with open(folder / "scores.jsonl", "w") as f:
        for task, condition, sample, success in rows:
            f.write(json.dumps({"context": task, "condition": condition, "sample": sample,
                                "success": success, "failure": None}) + "\n")
    (folder / "run.json").write_text(json.dumps({"command": "", "config": {
        **CONFIG, "evaluate.samples": samples}}))
    return folder


def test_arc_rows_pair_by_task_and_shared_reads_an_evaluation_still_running(tmp_path, capsys):
    """A task's unit is its success % over its self-edits (`base`: its one attempt); a task
    some row does not hold whole (t3: one of two teacher_base self-edits, no teacher row yet)
    is refused, or with --shared left out and counted."""
    e = write_arc(tmp_path / "e", [
        ("t1", "base", None, True), ("t2", "base", None, False), ("t3", "base", None, False),
        ("t1", "teacher_base", 0, False), ("t1", "teacher_base", 1, True),
        ("t2", "teacher_base", 0, False), ("t2", "teacher_base", 1, False),
        ("t3", "teacher_base", 0, True),
        ("t1", "teacher", 0, True), ("t1", "teacher", 1, True),
        ("t2", "teacher", 0, False), ("t2", "teacher", 1, True)], samples=2)
    rows = [f"{e}:base", f"{e}:teacher_base", f"{e}:teacher"]
    with pytest.raises(ConfigError, match="--shared"):
        compare(rows)
    # t3 is in neither self-edit row whole: refused all the same, and counted when left out
    with pytest.raises(ConfigError, match=r"\['t3'\] have only some of their self-edits"):
        compare(rows[1:])
    assert compare(rows[1:], resamples=10, shared=True)[3] == 1
    summary, n, differ, left_out = compare(rows, resamples=2000, shared=True)
    assert (n, differ, left_out) == (2, [], 1)
    # by hand, t1 and t2: base 100, 0; teacher_base 50, 0; teacher 100, 50
    assert summary["e:base"]["success"]["estimate"]["mean"] == pytest.approx(50.0)
    assert summary["e:teacher_base"]["success"]["estimate"]["mean"] == pytest.approx(25.0)
    vs = summary["e:teacher"]["success"]["vs_e:teacher_base"]  # +50 on both tasks
    assert (vs["mean"], vs["low"], vs["high"]) == pytest.approx((50.0, 50.0, 50.0))
    assert list(summary["e:teacher"]) == ["success"]
    assert main(["--shared", *rows]) == 0
    out = capsys.readouterr().out
    assert "2 tasks" in out and "left out: 1" in out and "success %" in out

    squad = write(tmp_path / "s", [("t1", "passage", [q(-1.0, 1.0)])], CONFIG)
    with pytest.raises(ConfigError, match="ARC evaluations and the others SQuAD"):
        compare([f"{e}:base", f"{squad}:passage"])
    with pytest.raises(ConfigError, match="no passage or task in common"):
        compare([f"{e}:base", f"{write_arc(tmp_path / 'f', [('t9', 'base', None, 1)], 2)}:base"],
                shared=True)
    assert main(["--rewards", f"{e}:teacher"]) == 2
    assert "ARC evaluation" in capsys.readouterr().err
    (e / "run.json").unlink()
    with pytest.raises(ConfigError, match="no run.json"):
        compare([f"{e}:teacher"])

    # 1D-ARC ids: the differences again with the families resampled (+100 in one family of two)
    d = write_arc(tmp_path / "d", [(f"1d_{f}_{i}", c, 0, c == "teacher" and f == "fill")
                                   for f in ("fill", "flip") for i in range(3)
                                   for c in ("teacher_base", "teacher")], samples=1)
    summary = compare([f"{d}:teacher_base", f"{d}:teacher"], resamples=2000)[0]
    by_family = summary["d:teacher"]["success_by_family"]["vs_d:teacher_base"]
    assert (by_family["mean"], by_family["low"], by_family["high"], by_family["n"]) == (
        pytest.approx(50.0), 0.0, 100.0, 2)
    assert main([f"{d}:teacher_base", f"{d}:teacher"]) == 0
    out = capsys.readouterr().out
    assert "2 task families resampled" in out and "d:teacher minus d:teacher_base" in out


def test_noise_compares_the_same_self_edits_under_two_absorb_seeds(tmp_path, capsys):
    """--noise: gains over the first folder's passage row, by hand. p0 passage logprob -3; seed
    0 gains +1, -1 (samples 0, 1), seed 1 +0.5, +0.5 (tied: the pair is not ordered by both);
    p1 passage -2; seed 0 gains +1, +2, seed 1 -1, +1 (ordered alike)."""
    from loop.compare import noise_report

    def edits(folder):
        with open(folder / "self_edits.jsonl", "w") as f:
            for c in ("p0", "p1"):
                for i in (0, 1):
                    f.write(json.dumps({"condition": "teacher_base", "context": c, "sample": i,
                                        "text": f"{c}{i}"}) + "\n")

    a = write(tmp_path / "a", [("p0", "passage", [q(-3.0, 0.0)]), ("p1", "passage", [q(-2.0, 0.0)]),
                               ("p0", "teacher_base", [q(-2.0, 0.0, sample=0), q(-4.0, 0.0, sample=1)]),
                               ("p1", "teacher_base", [q(-1.0, 0.0, sample=0), q(0.0, 0.0, sample=1)])])
    b = write(tmp_path / "b", [("p0", "teacher_base", [q(-2.5, 0.0, sample=0), q(-2.5, 0.0, sample=1)]),
                               ("p1", "teacher_base", [q(-3.0, 0.0, sample=0), q(-1.0, 0.0, sample=1)])])
    edits(a), edits(b)
    report = noise_report([f"{a}:teacher_base", f"{b}:teacher_base"])
    # logprob gains: seed 0 [1, -1, 1, 2], seed 1 [0.5, 0.5, -1, 1]; same sign: 1, 0, 0, 1
    assert "4 self-edits absorbed under both seeds; per self-edit, its gain over the passage" in report
    assert "logprob: Spearman" in report and "same sign under both seeds 50%" in report
    assert "above 0 under the first: 75%" in report and "ordered alike 100% of 1" in report
    from loop.compare import noise, sample_means
    n = noise(sample_means(a, "teacher_base"), sample_means(b, "teacher_base"),
              {"p0": {"logprob": -3.0, "f1": 0.0, "contains": 0.0},
               "p1": {"logprob": -2.0, "f1": 0.0, "contains": 0.0}})
    # ranks of [1, -1, 1, 2] -> [2.5, 1, 2.5, 4]; of [0.5, 0.5, -1, 1] -> [2.5, 2.5, 1, 4]:
    # centred [0, -1.5, 0, 1.5] and [0, 0, -1.5, 1.5], covariance 2.25 over variance 4.5
    assert n["logprob"]["spearman"] == pytest.approx(0.5)
    with open(b / "run.json", "w") as f, open(a / "run.json", "w") as g:
        f.write(json.dumps({"command": "", "config": {**CONFIG, "evaluate.absorb_seed": 1}}))
        g.write(json.dumps({"command": "", "config": CONFIG}))
    assert "4 self-edits" in noise_report([f"{a}:teacher_base", f"{b}:teacher_base"])
    (b / "run.json").write_text(json.dumps({"command": "", "config": {**CONFIG, "seed": 1}}))
    assert main(["--noise", f"{a}:teacher_base", f"{b}:teacher_base"]) == 2
    assert "differ in seed" in capsys.readouterr().err
    (b / "run.json").unlink(), (a / "run.json").unlink()
    (b / "self_edits.jsonl").write_text(json.dumps({"condition": "teacher_base", "context": "p0",
                                                    "sample": 0, "text": "other"}) + "\n")
    assert main(["--noise", f"{a}:teacher_base", f"{b}:teacher_base"]) == 2
    assert "hold different self-edits" in capsys.readouterr().err

"""`python -m loop.compare`: rows of several evaluation folders, paired by passage (hand-made folders)."""

import json

import pytest

from loop.compare import compare, main
from loop.errors import ConfigError


def q(logprob, contains):
    return {"exact_match": 0.0, "f1": 0.0, "contains": contains, "logprob": logprob}


def write(folder, rows):
    folder.mkdir()
    with open(folder / "scores.jsonl", "w") as f:
        for context, condition, questions in rows:
            f.write(json.dumps({"context": context, "condition": condition,
                                "questions": questions}) + "\n")
    return folder


@pytest.fixture
def folders(tmp_path):
    a = write(tmp_path / "a", [("p0", "passage", [q(-4.0, 0.0), q(-2.0, 1.0)]),
                               ("p1", "passage", [q(-3.0, 0.0)]),
                               ("p0", "teacher_base", [q(-3.0, 1.0), q(-2.0, 1.0)]),
                               ("p1", "teacher_base", [q(-3.5, 0.0)])])
    b = write(tmp_path / "b", [("p1", "teacher_base", [q(-1.0, 1.0)]),  # another order
                               ("p0", "teacher_base", [q(-2.0, 0.0), q(-2.0, 0.0)])])
    return a, b


def test_rows_of_two_folders_are_paired_by_passage(folders):
    a, b = folders
    summary, n = compare([f"{a}:passage", f"{a}:teacher_base=long", f"{b}:teacher_base=rewrite"],
                         resamples=200)
    assert n == 2
    # by hand: passage logprob per passage -3.0, -3.0; long -2.5, -3.5; rewrite -2.0, -1.0
    assert summary["long"]["logprob"]["vs_" + f"{a.name}:passage"]["mean"] == pytest.approx(0.0)
    assert summary["rewrite"]["logprob"]["vs_long"]["mean"] == pytest.approx(1.5)
    assert summary["rewrite"]["contains"]["estimate"]["mean"] == pytest.approx(50.0)
    assert summary["rewrite"]["contains"]["vs_long"]["mean"] == pytest.approx(0.0)


def test_rows_of_other_passages_or_conditions_are_refused(folders, tmp_path, capsys):
    a, b = folders
    c = write(tmp_path / "c", [("p0", "teacher_base", [q(-1.0, 1.0)])])
    with pytest.raises(ConfigError, match="different passages"):
        compare([f"{a}:passage", f"{c}:teacher_base"])
    with pytest.raises(ConfigError, match="records no 'teacher' row"):
        compare([f"{b}:teacher"])
    with pytest.raises(ConfigError, match="not a loop.evaluate folder"):
        compare([f"{tmp_path}:passage"])
    assert main([f"{a}:passage", f"{c}:teacher_base"]) == 2
    assert "error: rows" in capsys.readouterr().err
    assert main([f"{a}:passage", f"{b}:teacher_base"]) == 0
    assert "2 passages" in capsys.readouterr().out


def test_reward_agreement_counts_ties_and_pairs_ordered_alike(tmp_path):
    def s(sample, logprob, contains, f1):
        return {"exact_match": 0.0, "f1": f1, "contains": contains, "logprob": logprob,
                "sample": sample}
    from loop.compare import reward_agreement, sample_means

    # p0: samples 0 < 1 on logprob and on f1, tied on contains; p1: logprob says 0 > 1, f1 1 > 0
    a = write(tmp_path / "a", [("p0", "teacher_base", [s(0, -3.0, 0.0, 0.1), s(1, -2.0, 0.0, 0.5)]),
                               ("p1", "teacher_base", [s(0, -1.0, 1.0, 0.0), s(1, -2.0, 0.0, 0.2)])])
    out = reward_agreement([sample_means(a, "teacher_base")])
    assert out["n_pairs"]["all"] == 2
    assert out["tied"] == {"logprob": 0.0, "f1": 0.0, "contains": 0.5}
    assert out["alike"]["logprob~f1"] == 0.5
    assert out["alike"]["logprob~contains"] == 1.0  # p1 only: both say sample 0
    assert out["both_ordered"]["f1~contains"] == 1
    assert out["alike"]["f1~contains"] == 0.0

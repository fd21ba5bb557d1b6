"""SQuAD-format data: the shipped files load; malformed files name the file and the entry."""

from __future__ import annotations

import dataclasses
import json

import pytest

from loop.core.config import PROJECT_ROOT, ConfigError, TaskConfig
from loop.core.domain import DataError
from loop.tasks.squad.data import load_squad

SQUAD = PROJECT_ROOT / "data" / "squad"
DEV_HEAD = ["train_pool/0", "train_pool/6", "train_pool/14", "train_pool/16", "train_pool/17"]


@pytest.mark.parametrize(("name", "passages", "questions"),
                         [("train_pool", 199, 956), ("eval200", 200, 974)])
def test_shipped_files_load(name, passages, questions):
    data = load_squad(SQUAD / f"{name}.json")
    assert len(data) == passages and sum(len(p.questions) for p in data) == questions
    assert data[3].id == f"{name}/3"


def test_shipped_files_are_disjoint():
    train = {p.context for p in load_squad(SQUAD / "train_pool.json")}
    assert not train & {p.context for p in load_squad(SQUAD / "eval200.json")}


GOOD = {"title": "T", "context": "C", "questions": [{"question": "Q?", "answer": "A"}]}


@pytest.mark.parametrize(("content", "message"), [
    ('[{"title": "T",\n  "context": }]', r"bad\.json: invalid JSON at line 2"),
    ("[]", r"bad\.json: expected a non-empty JSON list"),
    (json.dumps([GOOD, {**GOOD, "title": ""}]), r"bad\.json: passage 1: 'title' must be"),
    (json.dumps([{**GOOD, "questions": []}]), r"passage 0: 'questions' must be a non-empty list"),
    (json.dumps([GOOD, GOOD, {**GOOD, "questions": [{"question": "Q?"}]}]),
     r"passage 2, question 0: 'answer' must be"),
])
def test_malformed_files_name_file_and_entry(tmp_path, content, message):
    bad = tmp_path / "bad.json"
    bad.write_text(content)
    with pytest.raises(DataError, match=message):
        load_squad(bad)


def test_non_utf8_and_missing_files(tmp_path):
    bad = tmp_path / "latin1.json"
    bad.write_bytes(b'[{"title": "caf\xe9", "context": "C", "questions": []}]')  # Latin-1
    with pytest.raises(DataError, match=r"latin1\.json: not UTF-8"):
        load_squad(bad)
    with pytest.raises(DataError, match="no such file"):
        load_squad(tmp_path / "nope.json")


def test_the_dev_split_is_fixed_disjoint_and_the_loop_never_trains_on_it():
    from loop.core.domain import split
    from loop.tasks import domain
    from tests.conftest import compose_run

    run = compose_run()  # the loop's default task
    assert (run.task.split, run.task.dev_size) == ("train", 50)
    train = domain(run.task).load(run.task)
    dev = domain(run.task).load(dataclasses.replace(run.task, split="dev"))
    whole = domain(run.task).load(dataclasses.replace(run.task, split="all"))
    assert (len(train), len(dev), len(whole)) == (149, 50, 199)
    assert {p.id for p in train} | {p.id for p in dev} == {p.id for p in whole}
    assert not {p.id for p in train} & {p.id for p in dev}
    # pinned: the split has its own seed (no run's seed moves a passage between the two sides)
    assert [p.id for p in dev[:5]] == DEV_HEAD
    with pytest.raises(DataError, match="set task.split=all"):
        split(whole[:10], "train", 50)


def test_every_package_in_loop_tasks_is_a_domain_that_task_format_names():
    """A domain is found by its package name alone (a third domain: one package, one config
    file); an unknown format names the ones there are."""
    from loop.core.domain import Domain
    from loop.tasks import domain, formats

    assert formats() == ["arc", "squad"]
    for name in formats():
        d = domain(TaskConfig(name="t", format=name, data="x"))
        assert isinstance(d, Domain) and d.name == name and "base" in d.conditions
    with pytest.raises(DataError, match="unknown task.format 'csv'; choose arc or squad"):
        domain(TaskConfig(name="t", format="csv", data="x"))


def test_settings_that_cannot_apply_are_refused_at_launch():
    """passage_steps=own with every passage in one run, an absorb seed outside single-passage
    absorbing: refused with what to do, not silently ignored."""
    from loop.core.checks import check_settings
    from tests.conftest import compose_run

    with pytest.raises(ConfigError, match="passage_steps=shared there"):
        check_settings(compose_run("task=squad_cpt", "student.train.passage_steps=own"))
    with pytest.raises(ConfigError, match="evaluate.absorb_seed redraws"):
        check_settings(compose_run("task=squad_cpt", "evaluate.absorb_seed=1"))


def test_a_third_domain_is_provided_to_core_without_touching_the_others():
    """What core knows of a domain is what `provide` hands it: a third one (a package whose
    DOMAIN is this) gets its task.format accepted, its metric as a reward and in the registry,
    its settings unread by the other domains, none of theirs unread by it but their own."""
    from loop.core.checks import check_settings
    from loop.core.domain import Domain, formats, provide, unread_settings
    from loop.core.metrics import Metric, by_name, rewards
    from loop.tasks import DOMAINS
    from tests.conftest import compose_run

    class Toy(Domain):
        name, title, unit = "toy", "Toy", "item"
        conditions = ("base",)
        owns = ("student.toy.",)
        metrics = (Metric("hit", "hit %", "items hit %", reward="hit"),)

    toy = Toy()
    try:
        provide({**DOMAINS, "toy": toy})
        assert formats() == ("arc", "squad", "toy")
        assert rewards()["hit"] == by_name("hit") and "f1" in rewards()
        assert "student.toy." in unread_settings(DOMAINS["squad"])
        assert "student.toy." in unread_settings(DOMAINS["arc"])
        assert unread_settings(toy) == (*DOMAINS["arc"].owns, *DOMAINS["squad"].owns)
        check_settings(compose_run("task.format=toy", "reward.metric=hit"))
    finally:
        provide(DOMAINS)
    assert formats() == ("arc", "squad") and "hit" not in rewards()
    with pytest.raises(ConfigError, match="unknown reward.metric 'hit'"):
        check_settings(compose_run("reward.metric=hit"))

"""An optional local LLM judge (SEAL's yes/no prompt): a model preset loaded as a frozen grader."""

from __future__ import annotations

import student.evaluate
from loop.core.assets import check_available
from loop.core.config import CONF_DIR, ConfigError
from student.config import StudentConfig
from student.model import load_student


def load_judge(name: str, key: str = "evaluate.judge"):
    """A model preset from conf/model/, loaded as a frozen grader."""
    cfg = judge_config(name, key)
    check_available(key, cfg.name, cfg.hub_id, cfg.path, cfg.revision)
    model, tokenizer = load_student(cfg)
    return model, tokenizer, cfg.instruct


def judge_config(name: str, key: str = "evaluate.judge"):
    """The StudentConfig of a judge preset (conf/model/<name>.yaml)."""
    from omegaconf import OmegaConf

    path = CONF_DIR / "model" / f"{name}.yaml"
    if not path.is_file():
        presets = sorted(p.stem for p in path.parent.glob("*.yaml"))
        raise ConfigError(f"{key}={name} is not a model preset; choose from {presets}")
    return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(StudentConfig),
                                               OmegaConf.load(path)))


def add_verdicts(scores: list[dict], judge_model, title: str) -> list[dict]:
    """Each scored question of a passage titled `title` with the judge's verdict and reply. The
    judge reads the question as the student did, after a `Topic: <title>` line (the
    reference's question text), and the student's whole answer."""
    model, tokenizer, instruct = judge_model
    items = [(f"Topic: {title}\n{s['question']}", s["gold"], s["prediction"]) for s in scores]
    # read from its module at each call (tests/loop/test_evaluate.py wraps student.evaluate.judge)
    verdicts = student.evaluate.judge(model, tokenizer, items, instruct=instruct)
    return [{**s, "judge": None if v is None else float(v), "judge_reply": reply}
            for s, (v, reply) in zip(scores, verdicts, strict=True)]

"""An ARC self-edit: the teacher's JSON choice of augmentations and training settings.

    {"data_generation": {"use_basic_augmentations": true, "use_size_augmentations": false,
                         "use_chain_augmentations": false, "use_repeat_augmentations": false},
     "training": {"strategy": "train_using_output_tokens", "learning_rate": 1e-4,
                  "num_train_epochs": 2}}

The teacher's text is untrusted data: it is parsed with `json` (never evaluated), only after
its length is capped, and validated against this schema and the configured ranges. Whatever
fails gives a `Parsed` with `config=None` and the reason, which the loop records and scores as
a failed self-edit (reward 0): no crash and no re-sampling until something parses (the
reference re-samples without a limit and crashes on valid JSON with missing keys).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

STRATEGIES = {"train_using_all_tokens": "all", "train_using_output_tokens": "output"}
FLAGS = {"use_basic_augmentations": "basic", "use_size_augmentations": "size",
         "use_chain_augmentations": "chain", "use_repeat_augmentations": "repeat"}
MAX_CHARS = 4096  # longer answers are not parsed (the teacher's own cap is far lower)


@dataclass(frozen=True)
class TTTConfig:
    """What a self-edit chooses for the student's test-time training."""

    families: tuple[str, ...]  # the augmentation families switched on, in FAMILIES order
    loss: str  # "all" tokens, or the "output" grid's tokens only
    lr: float
    epochs: int


@dataclass(frozen=True)
class Parsed:
    config: TTTConfig | None
    reason: str | None = None  # why config is None


def _json_object(text: str) -> dict | None:
    """The first JSON object in `text`: the whole text, or the span from the first '{' to the
    last '}' (small teachers wrap JSON in prose or markdown fences)."""
    for candidate in (text.strip(), text[text.find("{"): text.rfind("}") + 1]):
        try:
            value = json.loads(candidate)
        except (ValueError, RecursionError):
            continue
        if isinstance(value, dict):
            return value
    return None


def parse(text: str, lr_range: tuple[float, float], max_epochs: int) -> Parsed:
    """The self-edit's TTT config, or the reason it has none."""
    if len(text) > MAX_CHARS:
        return Parsed(None, f"longer than {MAX_CHARS} characters")
    obj = _json_object(text)
    if obj is None:
        return Parsed(None, "no JSON object")
    gen, train = obj.get("data_generation"), obj.get("training")
    if not isinstance(gen, dict):
        return Parsed(None, "'data_generation' missing or not an object")
    if not isinstance(train, dict):
        return Parsed(None, "'training' missing or not an object")
    families = []
    for key, fam in FLAGS.items():
        value = gen.get(key)
        if not isinstance(value, bool):
            return Parsed(None, f"data_generation.{key} must be true or false, got {value!r:.40}")
        if value:
            families.append(fam)
    strategy = train.get("strategy")
    if strategy not in STRATEGIES:
        return Parsed(None, f"training.strategy must be one of {sorted(STRATEGIES)}, "
                            f"got {strategy!r:.40}")
    lr = train.get("learning_rate")
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not math.isfinite(lr):
        return Parsed(None, f"training.learning_rate must be a number, got {lr!r:.40}")
    if not lr_range[0] <= lr <= lr_range[1]:
        return Parsed(None, f"training.learning_rate {lr:g} outside [{lr_range[0]:g}, "
                            f"{lr_range[1]:g}]")
    epochs = train.get("num_train_epochs")
    if isinstance(epochs, float) and epochs.is_integer():
        epochs = int(epochs)
    if isinstance(epochs, bool) or not isinstance(epochs, int):
        return Parsed(None, f"training.num_train_epochs must be an integer, got {epochs!r:.40}")
    if not 1 <= epochs <= max_epochs:
        return Parsed(None, f"training.num_train_epochs {epochs} outside [1, {max_epochs}]")
    return Parsed(TTTConfig(tuple(families), STRATEGIES[strategy], float(lr), epochs))


def to_json(config: TTTConfig) -> str:
    """The self-edit text for a config (the oracle's, and tests')."""
    strategy = {v: k for k, v in STRATEGIES.items()}[config.loss]
    return json.dumps({"data_generation": {k: fam in config.families for k, fam in FLAGS.items()},
                       "training": {"strategy": strategy, "learning_rate": config.lr,
                                    "num_train_epochs": config.epochs}})

"""A self-edit becomes training sequences; sequences become a padded batch with masked labels."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass

from student.config import SelfEditData

log = logging.getLogger(__name__)
IGNORE = -100  # label value the loss skips (PyTorch's cross-entropy ignore_index)


def training_texts(self_edit: str, title: str, passage: str, cfg: SelfEditData) -> list[str]:
    """SEAL's rule by default: the self-edit's units (`self_edit_units`), each prefixed with the
    title, then the raw passage as one more sequence."""
    chunks = self_edit_units(self_edit, cfg.split_lines)
    if cfg.with_passage:
        chunks.append(passage.strip())
    return [f"{title}\n{c}" if cfg.title_prefix else c for c in chunks]


_SEPARATOR = re.compile(r"^\s*-{3,}\s*$", re.M)  # a `---` line between parts of a self-edit
_QUESTION = re.compile(r"Question\s+\d+:")
_NEXT_QUESTION = re.compile(r"\n(?=Question\s+\d+:)")


def self_edit_units(self_edit: str, split_lines: bool = True) -> list[str]:
    """A self-edit's training units, by the reference's rule (its `build_train_sequences`):

    - parts separated by `---` lines are units of their own, and the separators are dropped;
    - with `split_lines`, a question-answer self-edit (it holds `Question N:` and `Answer:`) is
      cut where each new `Question N:` begins, so that an answer trains with its question; the
      first unit gets back the `Question 1: ` that ends the `self-qa` prompt;
    - with `split_lines`, any other self-edit gives one unit per non-empty line, and a preamble
      ("Sure, here are the implications:") is dropped when the second line starts the numbered
      list ("1.").
    """
    parts = [p.strip() for p in _SEPARATOR.split(self_edit) if p.strip()]
    if not split_lines:
        return parts
    text = "\n".join(parts)
    if _QUESTION.search(text) and re.search(r"Answer\s*:", text):
        units = [u.strip() for u in _NEXT_QUESTION.split(text) if u.strip()]
        if not units[0].startswith("Question"):
            units[0] = "Question 1: " + units[0]
        return units
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if len(lines) > 1 and lines[1].startswith("1."):
        lines = lines[1:]
    return lines


@dataclass
class Encoded:
    input_ids: list[list[int]]  # one list per sequence, unpadded, ending with EOS
    truncated: int  # how many sequences were cut to max_length
    dropped_tokens: int  # how many tokens the cuts removed


def encode(tokenizer, texts: list[str], max_length: int) -> Encoded:
    """Tokenise for causal-LM training: the tokenizer's own special tokens, then EOS."""
    ids, truncated, dropped = [], 0, 0
    for text in texts:
        seq = tokenizer(text, add_special_tokens=True)["input_ids"] + [tokenizer.eos_token_id]
        if len(seq) > max_length:
            truncated, dropped = truncated + 1, dropped + len(seq) - max_length
            seq = seq[:max_length]
        ids.append(seq)
    if truncated:
        log.warning("%d of %d training sequences exceed max_length=%d tokens: cut, dropping %d "
                    "tokens in all (raise student.data.max_length to keep them)",
                    truncated, len(texts), max_length, dropped)
    return Encoded(ids, truncated, dropped)


def collate(sequences: list[list[int]], pad_id: int):
    """Right-padded input_ids, attention_mask and labels; padding never enters the loss."""
    import torch

    width = max(len(s) for s in sequences)
    input_ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    labels = torch.full((len(sequences), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for i, s in enumerate(sequences):
        input_ids[i, : len(s)] = labels[i, : len(s)] = torch.tensor(s)
        mask[i, : len(s)] = 1
    return {"input_ids": input_ids, "attention_mask": mask, "labels": labels}


def pack(sequences: list[list[int]], labels: list[list[int]] | None = None):
    """All sequences in one row, no padding: positions restart at 0 for each sequence.

    Transformers reads restarting `position_ids` (with no attention mask and no cache) as packed
    sequences and builds a block-diagonal causal mask, so no sequence attends to another. The
    first token of each sequence is not a target (in a padded batch it never is either), so the
    loss equals the padded batch's loss, without spending compute on padding: a self-edit's
    short lines next to its long passage were 75% padding. `labels` (default: the tokens
    themselves) may mask tokens out of the loss with IGNORE.
    """
    import torch

    ids = [t for s in sequences for t in s]
    positions = [p for s in sequences for p in range(len(s))]
    given = ids if labels is None else [t for lab in labels for t in lab]
    if len(given) != len(ids):
        raise ValueError("pack: labels must have one entry per token")
    labels = [IGNORE if p == 0 else t for t, p in zip(given, positions, strict=True)]
    # use_cache=False: with a cache, transformers would not build the block-diagonal mask
    return {"input_ids": torch.tensor([ids]), "position_ids": torch.tensor([positions]),
            "labels": torch.tensor([labels]), "use_cache": False}

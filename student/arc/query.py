"""An ARC query as the student reads it: demonstrations, a test input and, for a training task,
its answer; rendered through the student's chat template (or as plain text), and encoded with
the answer's tokens located for an output-only loss."""

from __future__ import annotations

from dataclasses import dataclass

from student.arc import grids
from student.arc.grids import Grid
from student.data import IGNORE

Pair = tuple[Grid, Grid]  # (input, output)
SYSTEM = ("Figure out the underlying transformation in the following examples and apply it to "
          "the test case. Grids are rows of digits, one row per line.\n\n")


@dataclass
class Query:
    demos: list[Pair]
    input: Grid
    output: Grid | None = None  # the answer, for training tasks


def messages(q: Query) -> list[dict]:
    shown = "".join(f"Input:\n{grids.text(i)}\nOutput:\n{grids.text(o)}\n\n" for i, o in q.demos)
    out = [{"role": "system", "content": SYSTEM + shown},
           {"role": "user", "content": f"Input:\n{grids.text(q.input)}\nOutput:"}]
    if q.output is not None:
        out.append({"role": "assistant", "content": grids.text(q.output)})
    return out


def render_prompt(tokenizer, q: Query, instruct: bool) -> str:
    """The prompt up to where the answer starts (the chat template's assistant turn)."""
    msgs = messages(Query(q.demos, q.input))
    if instruct:
        return tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    return "\n".join(m["content"] for m in msgs) + "\n"


def encode(tokenizer, q: Query, instruct: bool, loss: str) -> tuple[list[int], list[int]]:
    """(input ids, labels) of a training task; `loss="output"` masks everything before the
    answer. The split point is where the rendered prompt alone ends."""
    prompt = render_prompt(tokenizer, q, instruct)
    if instruct:
        full = tokenizer.apply_chat_template(messages(q), tokenize=False)
    else:
        full = prompt + grids.text(q.output) + (tokenizer.eos_token or "")
    if not full.startswith(prompt):
        raise ValueError("the student's chat template renders the answer turn differently from "
                         "its generation prompt; train with the all-tokens strategy instead")
    p_ids = tokenizer(prompt, add_special_tokens=not instruct)["input_ids"]
    ids = tokenizer(full, add_special_tokens=not instruct)["input_ids"]
    if ids[: len(p_ids)] != p_ids:
        raise ValueError("the prompt's tokens change when the answer follows them; cannot locate "
                         "the answer tokens")
    labels = list(ids) if loss == "all" else [IGNORE] * len(p_ids) + ids[len(p_ids):]
    return ids, labels


def fits(q: Query, max_side: int) -> bool:
    every = [g for pair in q.demos for g in pair] + [q.input] + ([q.output] if q.output else [])
    return all(max(grids.shape(g)) <= max_side for g in every)

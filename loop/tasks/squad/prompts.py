"""SEAL's self-edit prompts for knowledge incorporation, chosen by name
(`teacher.sampling.prompt`)."""

from __future__ import annotations

from teacher.prompts import Prompt

_PASSAGE = "Passage:\n{title}\n{context}\n\n"
PROMPTS = {
    "implications": ("Let's read the following passage and produce a list of implications derived "
                     "directly or indirectly from the content.\n\n" + _PASSAGE + "Implications:\n"),
    "implications-long": ("Let's read the following passage and produce a long list of implications "
                          "derived directly or indirectly from the content.\n\n" + _PASSAGE
                          + "Implications:\n"),
    "implications-very-long": ("Let's read the following passage and produce a very long list of "
                               "implications derived directly or indirectly from the content.\n\n"
                               + _PASSAGE + "Implications:\n"),
    "rewrite": ("Let's read the following passage and rewrite it in a few different ways, each one "
                "separated by a newline.\n\n" + _PASSAGE + "Rewritten passages:\n"),
    "self-qa": ("Let's read the following passage and rewrite it in a question-answer format.\n\n"
                + _PASSAGE),
    "self-qa-list": ("Let's read the following passage and rewrite it as a long list of "
                     "question-answer pairs, one for every fact in it, each written as "
                     "\"Question N: ...\" on one line and \"Answer: ...\" on the next.\n\n"
                     + _PASSAGE),
}
# The start of the teacher's answer, written for it (the reference ends its self-qa prompt with
# "Question 1: ", which a base model continues): for a chat model it opens the assistant's
# turn, so the model goes on with its own list instead of answering a user who wrote it.
CUES = {"self-qa": "Question 1: ", "self-qa-list": "Question 1: "}


def self_edit_prompt(kind: str, title: str, context: str) -> Prompt:
    """The named prompt for a passage: one user message, or for a prompt with a cue (CUES) a
    user message and the assistant's turn begun with the cue (`render` continues it)."""
    if kind not in PROMPTS:
        raise ValueError(f"unknown self-edit prompt '{kind}'; choose from {sorted(PROMPTS)}")
    text = PROMPTS[kind].format(title=title, context=context)
    if kind not in CUES:
        return text
    return [{"role": "user", "content": text}, {"role": "assistant", "content": CUES[kind]}]

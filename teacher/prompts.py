"""Teacher prompts: SEAL's self-edit prompts for knowledge incorporation, chosen by name."""

from __future__ import annotations

_PASSAGE = "Passage:\n{title}\n{context}\n\n"
PROMPTS = {
    "implications": ("Let's read the following passage and produce a list of implications derived "
                     "directly or indirectly from the content.\n\n" + _PASSAGE + "Implications:\n"),
    "implications-long": ("Let's read the following passage and produce a long list of implications "
                          "derived directly or indirectly from the content.\n\n" + _PASSAGE
                          + "Implications:\n"),
    "rewrite": ("Let's read the following passage and rewrite it in a few different ways, each one "
                "separated by a newline.\n\n" + _PASSAGE + "Rewritten passages:\n"),
    "self-qa": ("Let's read the following passage and rewrite it in a question-answer format.\n\n"
                + _PASSAGE + "Question 1: "),
}


def self_edit_prompt(kind: str, title: str, context: str) -> str:
    if kind not in PROMPTS:
        raise ValueError(f"unknown self-edit prompt '{kind}'; choose from {sorted(PROMPTS)}")
    return PROMPTS[kind].format(title=title, context=context)


def render(tokenizer, text: str, instruct: bool) -> str:
    """The prompt as the model sees it: through the chat template for instruct models."""
    if not instruct:
        return text
    return tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                         add_generation_prompt=True)

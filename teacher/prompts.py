"""Teacher prompts. The text is SEAL's (knowledge incorporation, "implications")."""

from __future__ import annotations

IMPLICATIONS = (
    "Let's read the following passage and produce a list of implications derived directly or "
    "indirectly from the content.\n\nPassage:\n{title}\n{context}\n\nImplications:\n"
)


def implications_prompt(title: str, context: str) -> str:
    return IMPLICATIONS.format(title=title, context=context)


def render(tokenizer, text: str, instruct: bool) -> str:
    """The prompt as the model sees it: through the chat template for instruct models."""
    if not instruct:
        return text
    return tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                         add_generation_prompt=True)

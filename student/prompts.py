"""Student prompts. The answer prompt is SEAL's (knowledge incorporation, closed book)."""

from __future__ import annotations

ANSWER = "Let's answer a question directly and concisely.\nQuestion: Topic: {title}\n{question}\nAnswer:\n"


def answer_prompt(title: str, question: str) -> str:
    return ANSWER.format(title=title, question=question)


def render(tokenizer, text: str, instruct: bool) -> str:
    """The prompt as the model sees it: through the chat template for instruct models."""
    if not instruct:
        return text
    return tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                         add_generation_prompt=True)

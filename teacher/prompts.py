"""How a teacher reads a prompt: one user message or a whole chat, rendered through the chat
template or as plain text, a begun answer (a cue) continued. The prompts themselves are the
domains' (`loop/tasks/<name>/prompts.py`)."""

from __future__ import annotations

Prompt = str | list[dict]  # one user message, or a whole chat (e.g. a system message first)


def as_messages(prompt: Prompt) -> list[dict]:
    return [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt


def cue(prompt: Prompt) -> str | None:
    """The assistant's begun answer that ends a chat prompt (a domain's cue), or None."""
    if isinstance(prompt, str) or not prompt or prompt[-1]["role"] != "assistant":
        return None
    return prompt[-1]["content"]


def as_text(prompt: Prompt) -> str:
    """A prompt for a model without a chat template: the messages' texts, a blank line apart,
    and a cue (the assistant's begun answer) right after them, as the model continues it."""
    if isinstance(prompt, str):
        return prompt
    if cue(prompt) is not None:
        return as_text(prompt[:-1]) + prompt[-1]["content"]
    return "\n\n".join(m["content"] for m in prompt)


def render(tokenizer, text: Prompt, instruct: bool) -> str:
    """The prompt as the model sees it: through the chat template for instruct models (a
    string is one user message; a list is a whole chat, as `loop.serve` receives it; a chat
    ending with the assistant's begun answer is continued, not answered)."""
    if not instruct:
        return as_text(text)
    if cue(text) is not None:  # ends on the cue's last word: the model writes " What ..."
        begun = [*text[:-1], {**text[-1], "content": text[-1]["content"].rstrip()}]
        return tokenizer.apply_chat_template(begun, tokenize=False,
                                             continue_final_message=True)
    return tokenizer.apply_chat_template(as_messages(text), tokenize=False,
                                         add_generation_prompt=True)

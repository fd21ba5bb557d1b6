"""Teacher prompts: SEAL's self-edit prompts, for knowledge incorporation (chosen by name) and ARC."""

from __future__ import annotations

Prompt = str | list[dict]  # one user message, or a whole chat (e.g. a system message first)

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


def as_messages(prompt: Prompt) -> list[dict]:
    return [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt


def cue(prompt: Prompt) -> str | None:
    """The assistant's begun answer that ends a chat prompt (CUES), or None."""
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


ARC_INSTRUCTION = """You are configuring a model training pipeline by selecting from predefined tools.

You must make two decisions:

1. **Data Generation Tools** - For each of the following, choose true or false:
    - use_basic_augmentations
    - use_size_augmentations
    - use_chain_augmentations
    - use_repeat_augmentations

2. **Training Configuration** - Choose one of:
    - "train_using_all_tokens"
    - "train_using_output_tokens"

Also specify:
    - learning_rate (float)
    - num_train_epochs (integer)

### Output Format

Respond with a valid JSON object. Do not include any explanation, markdown, or extra text. Use \
lowercase `true`/`false` for booleans and ensure correct JSON syntax.

Example output:

{
  "data_generation": {
    "use_basic_augmentations": ...,
    "use_size_augmentations": ...,
    "use_chain_augmentations": ...,
    "use_repeat_augmentations": ...
  },
  "training": {
    "strategy": ...,
    "learning_rate": ...,
    "num_train_epochs": ...
  }
}"""


ARC_SYSTEM = ("You are a helpful assistant that provide the correct output for the given task "
              "immediately.")  # the reference's system message, verbatim


ARC_PROMPTS = ("seal", "limits")


def arc_prompt(demos: list[tuple[list[list[int]], list[list[int]]]],
               limits: str | None = None) -> list[dict]:
    """SEAL's ARC self-edit prompt, a chat: the reference's system message, then the task's
    demonstrations (rows of space-separated digits under Input: / Output:) and the instruction
    to answer with a JSON training configuration. The test input is not shown. `limits`: a
    section appended to the instruction (teacher.sampling.arc_prompt=limits)."""
    def grid(g):
        return "".join(" ".join(str(v) for v in row) + "\n" for row in g)

    shown = "".join(f"Input:\n{grid(i)}\nOutput:\n{grid(o)}\n" for i, o in demos)
    return [{"role": "system", "content": ARC_SYSTEM},
            {"role": "user", "content": shown + "------\n\n" + ARC_INSTRUCTION
             + (f"\n\n{limits}" if limits else "")}]

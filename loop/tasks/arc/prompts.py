"""SEAL's ARC self-edit prompt (`teacher.sampling.arc_prompt=seal`), and the same with the limits
the task enforces (`limits`, written by `loop.tasks.arc.solve.limits`)."""

from __future__ import annotations

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

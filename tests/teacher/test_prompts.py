"""Teacher prompts: SEAL's text, chosen by name."""

from __future__ import annotations

import pytest

from loop.tasks.squad.prompts import PROMPTS, self_edit_prompt
from teacher.prompts import as_text


def test_implications_is_seals_text():
    assert self_edit_prompt("implications", "T", "C") == (
        "Let's read the following passage and produce a list of implications derived directly or "
        "indirectly from the content.\n\nPassage:\nT\nC\n\nImplications:\n")


def test_every_prompt_holds_the_passage_and_unknown_names_fail():
    assert sorted(PROMPTS) == ["implications", "implications-long", "implications-very-long",
                              "rewrite", "self-qa", "self-qa-list"]
    for kind in PROMPTS:
        text = as_text(self_edit_prompt(kind, "Title", "The context."))
        assert "Passage:\nTitle\nThe context.\n\n" in text
    with pytest.raises(ValueError, match="unknown self-edit prompt 'summary'"):
        self_edit_prompt("summary", "T", "C")


def test_the_self_qa_cue_opens_the_assistants_turn(tiny_qwen2):
    """SEAL's self-qa prompt ends with "Question 1: ", which a base model continues: for a base
    model the text is the reference's byte for byte; a chat model gets the cue as the start of
    its own answer (the chat template continued, not a user message that ends with it; it ends
    on the cue's last word, so the model writes " What ..." as the M-step's completion spells
    it), and the M-step teaches the cue with the completion, not as the user's words."""
    from transformers import AutoTokenizer

    from teacher.prompts import render
    from teacher.train import pair_rows

    chat = self_edit_prompt("self-qa", "T", "C")
    assert as_text(chat) == ("Let's read the following passage and rewrite it in a "
                             "question-answer format.\n\nPassage:\nT\nC\n\nQuestion 1: ")
    tok = AutoTokenizer.from_pretrained(tiny_qwen2)
    rendered = render(tok, chat, instruct=True)
    assert rendered.endswith("<|im_start|>user\nLet's read the following passage and rewrite "
                             "it in a question-answer format.\n\nPassage:\nT\nC\n\n<|im_end|>"
                             "\n<|im_start|>assistant\nQuestion 1:")
    assert render(tok, chat, instruct=False) == as_text(chat)
    plain = render(tok, self_edit_prompt("implications", "T", "C"), instruct=True)
    assert plain.endswith("Implications:\n<|im_end|>\n<|im_start|>assistant\n")
    row = pair_rows([(chat, "When?\nAnswer: 1856.")], instruct=True)[0]
    assert row["prompt"] == chat[:1]
    assert row["completion"] == [{"role": "assistant",
                                  "content": "Question 1: When?\nAnswer: 1856."}]
    assert pair_rows([(chat, "When?")], instruct=False)[0] == {"prompt": as_text(chat),
                                                                "completion": "When?"}

"""Teacher prompts: SEAL's text, chosen by name."""

from __future__ import annotations

import pytest

from teacher.prompts import PROMPTS, self_edit_prompt


def test_implications_is_seals_text():
    assert self_edit_prompt("implications", "T", "C") == (
        "Let's read the following passage and produce a list of implications derived directly or "
        "indirectly from the content.\n\nPassage:\nT\nC\n\nImplications:\n")


def test_every_prompt_holds_the_passage_and_unknown_names_fail():
    assert sorted(PROMPTS) == ["implications", "implications-long", "implications-very-long",
                              "rewrite", "self-qa"]
    for kind in PROMPTS:
        assert "Passage:\nTitle\nThe context.\n\n" in self_edit_prompt(kind, "Title", "The context.")
    with pytest.raises(ValueError, match="unknown self-edit prompt 'summary'"):
        self_edit_prompt("summary", "T", "C")

"""Self-edit -> training sequences -> padded batch: SEAL's rule and its options, padding masked."""

from __future__ import annotations

import logging

import pytest
import torch

from student.config import SelfEditData
from student.data import IGNORE, collate, encode, pack, training_texts

EDIT = "1. Greece stayed out.\n\n   2. Otto wanted land.  \n\n"


def test_reference_rule_one_titled_sequence_per_line_then_the_passage():
    assert training_texts(EDIT, "Crimean War", "The passage.", SelfEditData()) == [
        "Crimean War\n1. Greece stayed out.", "Crimean War\n2. Otto wanted land.",
        "Crimean War\nThe passage."]


@pytest.mark.parametrize(("options", "expected"), [
    (dict(split_lines=False), ["T\n1. Greece stayed out.\n\n   2. Otto wanted land.", "T\nP"]),
    (dict(with_passage=False), ["T\n1. Greece stayed out.", "T\n2. Otto wanted land."]),
    (dict(title_prefix=False, with_passage=False), ["1. Greece stayed out.", "2. Otto wanted land."]),
])
def test_options(options, expected):
    assert training_texts(EDIT, "T", "P", SelfEditData(**options)) == expected


def test_an_empty_self_edit_leaves_only_the_passage():
    assert training_texts(" \n\n", "T", "P", SelfEditData()) == ["T\nP"]
    assert training_texts("", "T", "P", SelfEditData(with_passage=False)) == []


def test_encode_ends_with_eos_and_truncation_says_how_much(tiny_llama, caplog):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_llama)
    short, long = "Paris is in France.", " ".join(["word"] * 50)
    enc = encode(tok, [short, long], max_length=1000)
    assert enc.input_ids[0][-1] == tok.eos_token_id and enc.truncated == 0
    full = len(enc.input_ids[1])
    with caplog.at_level(logging.WARNING):
        cut = encode(tok, [short, long], max_length=10)
    assert [len(s) for s in cut.input_ids] == [len(enc.input_ids[0]), 10]
    assert (cut.truncated, cut.dropped_tokens) == (1, full - 10)
    assert f"1 of 2 training sequences exceed max_length=10 tokens: cut, dropping {full - 10}" in caplog.text


def test_collate_masks_padding_out_of_labels_and_attention():
    batch = collate([[5, 6, 7], [8]], pad_id=0)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert batch["labels"].tolist() == [[5, 6, 7], [8, IGNORE, IGNORE]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]


def test_padding_never_contributes_to_the_loss(tiny_llama):
    from student.model import load_student
    from tests.student.test_models import tiny_student

    model, tok = load_student(tiny_student(tiny_llama))
    seq = encode(tok, ["Greece played a peripheral role in the war."], 100).input_ids[0]
    alone = model(**collate([seq], tok.pad_token_id)).loss
    batch = collate([seq, seq + [7] * 30], tok.pad_token_id)
    padded = {k: v[:1] for k, v in batch.items()}  # seq followed by 30 pad tokens
    assert padded["input_ids"].shape[1] == len(seq) + 30
    assert torch.allclose(model(**padded).loss, alone, atol=1e-6)


def test_pack_restarts_positions_and_never_targets_a_sequence_start():
    batch = pack([[5, 6, 7], [8, 9]])
    assert batch["input_ids"].tolist() == [[5, 6, 7, 8, 9]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 0, 1]]
    assert batch["labels"].tolist() == [[IGNORE, 6, 7, IGNORE, 9]]


@pytest.mark.parametrize("fixture", ["tiny_llama", "tiny_qwen2"])
def test_packed_batch_equals_padded_batch(fixture, request):
    """Same loss and same gradients as the padded batch: packing only drops the padding."""
    from student.model import load_student
    from tests.student.test_models import tiny_student

    model, tok = load_student(tiny_student(request.getfixturevalue(fixture)))
    seqs = encode(tok, ["Crimean War\nGreece stayed out.", "Crimean War\n" + "The war ended "
                        "in 1856 with the Treaty of Paris, signed by Russia and the allies.", "Hi"],
                  100).input_ids
    weight = model.get_input_embeddings().weight
    weight.requires_grad_(True)
    losses, grads = [], []
    for batch in (collate(seqs, tok.pad_token_id), pack(seqs)):
        loss = model(**batch).loss
        loss.backward()
        losses.append(loss.detach())
        grads.append(weight.grad.clone())
        weight.grad = None
    assert torch.allclose(losses[0], losses[1], atol=1e-5)
    assert torch.allclose(grads[0], grads[1], atol=1e-6)


QA = "When did it end?\nAnswer: In 1856.\nQuestion 2: Who signed?\nAnswer: Russia and\nFrance."


def test_a_question_answer_self_edit_keeps_each_answer_with_its_question():
    """The reference's self-qa rule: cut where a new `Question N:` begins, and give the first
    unit back the `Question 1: ` that ends the prompt (hand-written expectation)."""
    assert training_texts(QA, "T", "P", SelfEditData()) == [
        "T\nQuestion 1: When did it end?\nAnswer: In 1856.",
        "T\nQuestion 2: Who signed?\nAnswer: Russia and\nFrance.", "T\nP"]


def test_a_preamble_before_a_numbered_list_and_separator_lines_are_dropped():
    edit = "Sure, here are the implications:\n1. Greece stayed out.\n---\n2. Otto wanted land."
    assert training_texts(edit, "T", "P", SelfEditData(with_passage=False)) == [
        "T\n1. Greece stayed out.", "T\n2. Otto wanted land."]
    # a first line that is not a preamble (the list does not start on the second line) is kept
    assert training_texts("Greece stayed out.\nOtto wanted land.", "T", "P",
                          SelfEditData(with_passage=False)) == ["T\nGreece stayed out.",
                                                                "T\nOtto wanted land."]
    # without line splitting, `---` still separates units
    assert training_texts("A b.\n c d.\n---\nE f.", "T", "P",
                          SelfEditData(split_lines=False, with_passage=False)) == [
        "T\nA b.\n c d.", "T\nE f."]

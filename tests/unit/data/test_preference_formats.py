"""Preference dataset types: each row -> (prompt + chosen, prompt + rejected), only completions trained."""

from __future__ import annotations

import pytest
from kubetune.data.formats import RowProblem
from kubetune.data.formats.preference import ChatmlIntel, ChatTemplatePairs

from .conftest import decoded_spans, example


def _pair(examples, k):
    (chosen_ids, chosen_labels), (rejected_ids, rejected_labels) = (
        example(examples, 2 * k),
        example(examples, 2 * k + 1),
    )
    return chosen_ids, chosen_labels, rejected_ids, rejected_labels


def _prompt_ids(ids, labels):
    return ids[: next(i for i, label in enumerate(labels) if label != -100)]


def test_chat_template_default_scores_only_the_answers(tokenizer):
    dataset = {
        "field_messages": "conversation",
        "message_property_mappings": {"role": "from", "content": "value"},
        "roles": {"user": ["human"]},
    }
    fmt = ChatTemplatePairs(tokenizer, dataset, chat_template="chatml")
    rows = [
        {
            "conversation": [
                {"from": "system", "value": "You are terse."},
                {"from": "human", "value": "Spell the digit. 6"},
            ],
            "chosen": {"from": "assistant", "value": "six"},
            "rejected": {"from": "assistant", "value": "seven"},
        },
        {
            "conversation": [{"from": "human", "value": "Translate the colour to French. red"}],
            "chosen": "rouge",  # a plain string answer
            "rejected": "bleu",
        },
    ]
    examples = fmt.tokenize_rows(rows)
    assert len(examples) == 4
    chosen_ids, chosen_labels, rejected_ids, rejected_labels = _pair(examples, 0)
    assert decoded_spans(tokenizer, chosen_labels) == ["six<|im_end|>"]
    assert decoded_spans(tokenizer, rejected_labels) == ["seven<|im_end|>"]
    prompt = _prompt_ids(chosen_ids, chosen_labels)
    assert prompt == _prompt_ids(rejected_ids, rejected_labels)  # the same prompt tokens on both sides
    assert tokenizer.decode(prompt) == (
        "<s><|im_start|>system\nYou are terse.<|im_end|>\n<|im_start|>user\nSpell the digit. 6<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    _, chosen_labels, _, rejected_labels = _pair(examples, 1)
    assert decoded_spans(tokenizer, chosen_labels) == ["rouge<|im_end|>"]
    assert decoded_spans(tokenizer, rejected_labels) == ["bleu<|im_end|>"]


def test_chatml_intel(tokenizer):
    fmt = ChatmlIntel(tokenizer, {})
    rows = [
        {"system": "You are terse.", "question": "Spell the digit. 3", "chosen": "three", "rejected": "two"},
        {"system": "", "question": "Spell the digit. 4", "chosen": "four", "rejected": "five"},
    ]
    examples = fmt.tokenize_rows(rows)
    chosen_ids, chosen_labels, rejected_ids, rejected_labels = _pair(examples, 0)
    assert decoded_spans(tokenizer, chosen_labels) == ["three<|im_end|>"]
    assert decoded_spans(tokenizer, rejected_labels) == ["two<|im_end|>"]
    assert tokenizer.decode(_prompt_ids(chosen_ids, chosen_labels)) == (
        "<s><|im_start|>system\nYou are terse.<|im_end|>\n<|im_start|>user\nSpell the digit. 3<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    ids, labels, _, _ = _pair(examples, 1)
    assert tokenizer.decode(_prompt_ids(ids, labels)).startswith("<s><|im_start|>user\n")


def test_a_bad_row_is_named_by_its_row_index(tokenizer):
    fmt = ChatmlIntel(tokenizer, {})
    rows = [
        {"question": "q", "chosen": "a", "rejected": "b"},
        {"question": "q", "chosen": "a", "rejected": 3},
    ]
    with pytest.raises(RowProblem) as err:
        fmt.tokenize_rows(rows, first_index=10)
    assert err.value.row == 11 and "'rejected'" in err.value.message


def test_train_on_inputs_is_refused(tokenizer):
    fmt = ChatmlIntel(tokenizer, {}, train_on_inputs=True)
    with pytest.raises(RowProblem, match="only completions"):
        fmt.tokenize_rows([{"question": "q", "chosen": "a", "rejected": "b"}])

"""Preference dataset types: each row -> (prompt + chosen, prompt + rejected), only completions trained."""

from __future__ import annotations

import pytest
from kubetune.data.formats import RowProblem
from kubetune.data.formats.kto import KTO_FORMATS
from kubetune.data.formats.preference import ChatmlIntel, ChatTemplateArgilla, ChatTemplatePairs

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


def test_chat_template_argilla_reads_conversations_ending_with_the_answer(tokenizer):
    """Axolotl's ORPO type: prompt (string), system, chosen / rejected conversations [user, assistant]."""
    fmt = ChatTemplateArgilla(tokenizer, {}, chat_template="chatml")
    row = {
        "system": "You are terse.",
        "prompt": "Spell the digit. 2",
        "chosen": [
            {"role": "user", "content": "Spell the digit. 2"},
            {"role": "assistant", "content": "two"},
        ],
        "rejected": [
            {"role": "user", "content": "Spell the digit. 2"},
            {"role": "assistant", "content": "one"},
        ],
    }
    chosen_ids, chosen_labels, rejected_ids, rejected_labels = _pair(fmt.tokenize_rows([row]), 0)
    assert decoded_spans(tokenizer, chosen_labels) == ["two<|im_end|>"]
    assert decoded_spans(tokenizer, rejected_labels) == ["one<|im_end|>"]
    assert tokenizer.decode(_prompt_ids(chosen_ids, chosen_labels)) == (
        "<s><|im_start|>system\nYou are terse.<|im_end|>\n<|im_start|>user\nSpell the digit. 2<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    assert fmt.required_fields == ("prompt", "chosen", "rejected")


KTO_ROWS = [
    {"system": "You are terse.", "prompt": "Spell the digit. 3", "completion": "three", "label": True},
    {"prompt": "Spell the digit. 4", "completion": "five", "label": False},
    {"prompt": "Spell the digit. 6", "completion": "six", "label": True},
]


def test_kto_rows_give_the_completion_and_the_previous_rows_completion_as_kl(tokenizer):
    examples = KTO_FORMATS["chatml.ultra"](tokenizer, {}).tokenize_rows(KTO_ROWS)
    assert len(examples) == 6 and examples.flags.tolist() == [True, True, False, False, True, True]
    spans = [decoded_spans(tokenizer, example(examples, k)[1]) for k in range(6)]
    # (completion, KL completion) per row: the KL one is the previous row's (the first row takes the last's)
    assert spans == [["three<|im_end|>"], ["six<|im_end|>"], ["five<|im_end|>"], ["three<|im_end|>"],
                     ["six<|im_end|>"], ["five<|im_end|>"]]  # fmt: skip
    ids, labels = example(examples, 0)
    assert tokenizer.decode(_prompt_ids(ids, labels)) == (
        "<s><|im_start|>system\nYou are terse.<|im_end|>\n<|im_start|>user\nSpell the digit. 3<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    assert _prompt_ids(*example(examples, 1)) == _prompt_ids(ids, labels)  # the KL side keeps the prompt


@pytest.mark.parametrize(
    "type_name,row,prompt",
    [
        ("chatml.intel", {"question": "q1", "completion": "a", "label": True}, "<|im_start|>user\nq1<|im_end|>\n"),
        ("chatml.argilla", {"instruction": "q2", "completion": "a", "label": True}, "<|im_start|>user\nq2"),
        ("llama3.ultra", {"prompt": "q3", "completion": "a", "label": False},
         "<|start_header_id|>user<|end_header_id|>\n\nq3<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"),
        ("llama3.argilla_chat",
         {"completion": [{"role": "user", "content": "q4"}, {"role": "assistant", "content": "a"}], "label": True},
         "<|start_header_id|>user<|end_header_id|>\n\nq4<|eot_id|>"),
    ],
)  # fmt: skip
def test_kto_layouts_and_templates(tokenizer, type_name, row, prompt):
    examples = KTO_FORMATS[type_name](tokenizer, {}).tokenize_rows([row])
    ids, labels = example(examples, 0)
    assert prompt in tokenizer.decode(_prompt_ids(ids, labels))
    end = "<|eot_id|>" if type_name.startswith("llama3") else "<|im_end|>"
    assert decoded_spans(tokenizer, labels) == [f"a{end}"]


def test_a_kto_row_needs_a_boolean_label(tokenizer):
    fmt = KTO_FORMATS["chatml.ultra"](tokenizer, {})
    with pytest.raises(RowProblem) as err:
        fmt.tokenize_rows([KTO_ROWS[0], {"prompt": "q", "completion": "a", "label": "yes"}], first_index=4)
    assert err.value.row == 5 and "'label'" in err.value.message


def test_kto_type_names_resolve_by_rl():
    from kubetune.data.formats import resolve_format

    assert resolve_format("chatml.intel", path="t", rl="kto") is KTO_FORMATS["chatml.intel"]
    assert resolve_format("chatml.intel", path="t", rl="dpo") is ChatmlIntel
    assert resolve_format("llama3.ultra", path="t", rl="kto") is KTO_FORMATS["llama3.ultra"]

"""Axolotl's instruction variants: the exact prompt each writes, and that only the response and
eos are trained."""

from __future__ import annotations

import pytest
from kubetune.config import validate_mapping
from kubetune.config.datasets import INSTRUCTION_VARIANT_TYPES
from kubetune.data.formats import BUILTIN_FORMATS, RowProblem
from kubetune.data.formats.alpaca_variants import VARIANTS

from .conftest import decoded_spans, example

SYSTEM = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request."
)
SYSTEM_NO_INPUT = "Below is an instruction that describes a task. Write a response that appropriately completes the request."
CONCISE_NO_INPUT = (
    "Below is an instruction from a USER that describes a task. The ASSISTANT writes a response that "
    "appropriately and concisely completes the request.\n\n"
)
ROW = {"instruction": "Name the colour.", "input": "sky", "output": "blue"}

# type, row, the exact untrained prompt (after bos), the trained response
CASES = [
    ("alpaca:chat", ROW, f"SYSTEM: {SYSTEM}\nUSER: Name the colour.\nsky\nASSISTANT:", "blue"),
    (
        "alpaca_chat",
        {**ROW, "input": ""},
        f"SYSTEM: {SYSTEM_NO_INPUT}\nUSER: Name the colour.\nASSISTANT:",
        "blue",
    ),
    (
        "alpaca:instruct",
        ROW,
        f"{SYSTEM}\n\n### Instruction:\nName the colour.\n\n### Input:\nsky\n\n### Response:\n",
        "blue",
    ),
    (
        "alpaca:chatml",
        ROW,
        f"<|im_start|>system\n{SYSTEM}<|im_end|>\n<|im_start|>user\nName the colour.\nsky<|im_end|>\n"
        "<|im_start|>assistant\n",
        "blue",
    ),
    (
        "alpaca:phi",
        {**ROW, "input": None},
        f"<|system|>\n{SYSTEM_NO_INPUT}<|end|>\n<|user|>\nName the colour.<|end|>\n<|assistant|>\n",
        "blue",
    ),
    (
        "alpaca_chat.load_qa",
        {"question": "Capital of France?", "answer": "Paris"},
        f"SYSTEM: {CONCISE_NO_INPUT}\nUSER: Capital of France?\nASSISTANT:",
        "Paris",
    ),
    ("alpaca_chat.load_no_prompt", ROW, "USER: Name the colour.\nsky\nASSISTANT:", "blue"),
    (
        "jeopardy",
        {"question": "This planet is red", "category": "SPACE", "answer": "Mars"},
        f"{SYSTEM}\n\n### Instruction:\nThis planet is red\n\n### Input:\nSPACE\n\n### Response:\n",
        "what is Mars",
    ),
    (
        "explainchoice",
        {"question": "2+2?", "choices": ["3", "4"], "explanation": "4, as 2+2=4"},
        "Choose the answer that best answers the question. Explain your reasoning.\n\n\n"
        '### Instruction:\n2+2?\n\n### Input:\n- "3"\n- "4"\n\n### Response:\n',
        "4, as 2+2=4",
    ),
    (
        "concisechoice",
        {"question": "2+2?", "choices": ["3", "4"], "solution": "4"},
        'Choose the answer that best answers the question. Be concise in your response.\n\nUSER: 2+2?\n- "3"\n- "4"\n'
        "ASSISTANT:",
        "4",
    ),
    (
        "summarizetldr",
        {"article": "A long text.", "summary": "Short."},
        "USER: Summarize the following article as a TL;DR.\nA long text.\nASSISTANT:",
        "Short.",
    ),
]


def test_the_config_and_the_data_pipeline_know_the_same_variants():
    assert set(INSTRUCTION_VARIANT_TYPES) == set(VARIANTS)
    assert set(VARIANTS) <= set(BUILTIN_FORMATS)


@pytest.mark.parametrize(("type_name", "row", "prompt", "response"), CASES, ids=[c[0] for c in CASES])
def test_variant_prompt_is_axolotls_and_only_the_response_is_trained(
    tokenizer, type_name, row, prompt, response
):
    fmt = BUILTIN_FORMATS[type_name](tokenizer, {})
    ids, labels = example(fmt.tokenize_rows([row]), 0)
    assert tokenizer.decode(ids) == "<s>" + prompt + response + "</s>"
    assert decoded_spans(tokenizer, labels) == [response + "</s>"]


def test_alpaca_variants_read_the_field_mappings(tokenizer):
    fmt = BUILTIN_FORMATS["alpaca:chat"](tokenizer, {"field_instruction": "q", "field_output": "a"})
    ids, labels = example(fmt.tokenize_rows([{"q": "Name the colour.", "a": "blue"}]), 0)
    assert (
        tokenizer.decode(ids) == f"<s>SYSTEM: {SYSTEM_NO_INPUT}\nUSER: Name the colour.\nASSISTANT:blue</s>"
    )
    assert fmt.required_fields == ("q", "a")


def test_missing_column_is_a_row_problem(tokenizer):
    fmt = BUILTIN_FORMATS["jeopardy"](tokenizer, {})
    with pytest.raises(RowProblem, match="row 0: field 'answer'"):
        fmt.tokenize_rows([{"question": "q", "category": "c"}])


def _problems(entry):
    base = {"base_model": "m", "learning_rate": 1e-4, "num_epochs": 1}
    return [(p.path, p.message) for p in validate_mapping({**base, "datasets": [entry]})]


def test_config_accepts_the_variants_and_refuses_unknown_ones_with_the_list():
    assert _problems({"path": "d", "type": "alpaca:chat", "field_instruction": "q"}) == []
    assert _problems({"path": "d", "type": "jeopardy"}) == []
    ((path, message),) = _problems({"path": "d", "type": "jeopardy", "field_instruction": "q"})
    assert path == "datasets[0].field_instruction"
    ((path, message),) = _problems({"path": "d", "type": "alpaca_chat.load_foo"})
    assert path == "datasets[0].type" and "not one of the variants" in message

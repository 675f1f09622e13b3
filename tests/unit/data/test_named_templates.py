"""The chat templates kubetune ships by name: the exact text each renders for one conversation,
and the spans it trains (assistant contents, reasoning traces, end-of-turn tokens)."""

from __future__ import annotations

import copy

import pytest
from kubetune.config.model import CHAT_TEMPLATE_NAMES, SHIPPED_CHAT_TEMPLATES
from kubetune.data.formats import RowProblem
from kubetune.data.formats.chat_template import ChatTemplate
from kubetune.data.formats.named_templates import NAMED_TEMPLATES
from kubetune.data.pipeline import make_format

from .conftest import decoded_spans, example, train_config

# The turn markers of every family, special in the test tokenizer (as in the real ones).
MARKERS = [
    "<|im_start|>",
    "<|im_end|>",
    "<start_of_turn>",
    "<end_of_turn>",
    "<|header_start|>",
    "<|header_end|>",
    "<|eot|>",
    "<|turn>",
    "<turn|>",
    "<|system|>",
    "<|user|>",
    "<|assistant|>",
    "<|end|>",
    "<|START_OF_TURN_TOKEN|>",
    "<|SYSTEM_TOKEN|>",
    "<|USER_TOKEN|>",
    "<|CHATBOT_TOKEN|>",
    "<|END_OF_TURN_TOKEN|>",
    "<｜User｜>",
    "<｜Assistant｜>",
    "[INST]",
    "[/INST]",
    "[SYSTEM_PROMPT]",
    "[/SYSTEM_PROMPT]",
    "<|bom|>",
    "<|eom|>",
]

CONVERSATION = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Spell the digit. 6"},
    {"role": "assistant", "content": "six"},
    {"role": "user", "content": "Colour in French? red"},
    {"role": "assistant", "content": "rouge"},
]
QWEN = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."

# name -> (the exact rendering of CONVERSATION, the trained spans); <s> is the tokenizer's bos.
EXPECTED = {
    "chatml": (
        "<|im_start|>system\nYou are terse.<|im_end|>\n<|im_start|>user\nSpell the digit. 6<|im_end|>\n"
        "<|im_start|>assistant\nsix<|im_end|>\n<|im_start|>user\nColour in French? red<|im_end|>\n"
        "<|im_start|>assistant\nrouge<|im_end|>\n",
        ["six<|im_end|>", "rouge<|im_end|>"],
    ),
    "falcon_h1": (
        "<s><|im_start|>system\nYou are terse.<|im_end|>\n<|im_start|>user\nSpell the digit. 6<|im_end|>\n"
        "<|im_start|>assistant\nsix<|im_end|>\n<|im_start|>user\nColour in French? red<|im_end|>\n"
        "<|im_start|>assistant\nrouge<|im_end|>\n",
        ["six<|im_end|>", "rouge<|im_end|>"],
    ),
    "qwen_25": (
        "<|im_start|>system\nYou are terse.<|im_end|>\n<|im_start|>user\nSpell the digit. 6<|im_end|>\n"
        "<|im_start|>assistant\nsix<|im_end|>\n<|im_start|>user\nColour in French? red<|im_end|>\n"
        "<|im_start|>assistant\nrouge<|im_end|>\n",
        ["six<|im_end|>", "rouge<|im_end|>"],
    ),
    # The final assistant turn carries an (empty) thinking block, as Qwen 3 renders it.
    "qwen3": (
        "<|im_start|>system\nYou are terse.<|im_end|>\n<|im_start|>user\nSpell the digit. 6<|im_end|>\n"
        "<|im_start|>assistant\nsix<|im_end|>\n<|im_start|>user\nColour in French? red<|im_end|>\n"
        "<|im_start|>assistant\n<think>\n\n</think>\n\nrouge<|im_end|>\n",
        ["six<|im_end|>", "rouge<|im_end|>"],
    ),
    "qwen3_5": (
        "<|im_start|>system\nYou are terse.<|im_end|>\n<|im_start|>user\nSpell the digit. 6<|im_end|>\n"
        "<|im_start|>assistant\nsix<|im_end|>\n<|im_start|>user\nColour in French? red<|im_end|>\n"
        "<|im_start|>assistant\n<think>\n\n</think>\n\nrouge<|im_end|>\n",
        ["six<|im_end|>", "rouge<|im_end|>"],
    ),
    "llama3": (
        "<s><|start_header_id|>system<|end_header_id|>\n\nYou are terse.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nSpell the digit. 6<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\nsix<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nColour in French? red<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\nrouge<|eot_id|>",
        ["six<|eot_id|>", "rouge<|eot_id|>"],
    ),
    "llama4": (
        "<s><|header_start|>system<|header_end|>\n\nYou are terse.<|eot|>"
        "<|header_start|>user<|header_end|>\n\nSpell the digit. 6<|eot|>"
        "<|header_start|>assistant<|header_end|>\n\nsix<|eot|>"
        "<|header_start|>user<|header_end|>\n\nColour in French? red<|eot|>"
        "<|header_start|>assistant<|header_end|>\n\nrouge<|eot|>",
        ["six<|eot|>", "rouge<|eot|>"],
    ),
    # Gemma 3 has no system turn: the system text opens the first user turn.
    "gemma3": (
        "<s><start_of_turn>user\nYou are terse.\n\nSpell the digit. 6<end_of_turn>\n"
        "<start_of_turn>model\nsix<end_of_turn>\n<start_of_turn>user\nColour in French? red<end_of_turn>\n"
        "<start_of_turn>model\nrouge<end_of_turn>\n",
        ["six<end_of_turn>", "rouge<end_of_turn>"],
    ),
    "gemma4": (
        "<s><|turn>system\nYou are terse.<turn|>\n<|turn>user\nSpell the digit. 6<turn|>\n"
        "<|turn>model\nsix<turn|>\n<|turn>user\nColour in French? red<turn|>\n<|turn>model\nrouge<turn|>\n",
        ["six<turn|>", "rouge<turn|>"],
    ),
    "phi_3": (
        "<s><|system|>\nYou are terse.<|end|>\n<|user|>\nSpell the digit. 6<|end|>\n"
        "<|assistant|>\nsix<|end|>\n<|user|>\nColour in French? red<|end|>\n<|assistant|>\nrouge<|end|>\n",
        ["six<|end|>", "rouge<|end|>"],
    ),
    "cohere": (
        "<s><|START_OF_TURN_TOKEN|><|SYSTEM_TOKEN|>You are terse.<|END_OF_TURN_TOKEN|>"
        "<|START_OF_TURN_TOKEN|><|USER_TOKEN|>Spell the digit. 6<|END_OF_TURN_TOKEN|>"
        "<|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|>six<|END_OF_TURN_TOKEN|>"
        "<|START_OF_TURN_TOKEN|><|USER_TOKEN|>Colour in French? red<|END_OF_TURN_TOKEN|>"
        "<|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|>rouge<|END_OF_TURN_TOKEN|>",
        ["six<|END_OF_TURN_TOKEN|>", "rouge<|END_OF_TURN_TOKEN|>"],
    ),
    # The eos after each reply is its end of turn.
    "deepseek_v2": (
        "<s>You are terse.\n\n<｜User｜>Spell the digit. 6<｜Assistant｜>six</s>"
        "<｜User｜>Colour in French? red<｜Assistant｜>rouge</s>",
        ["six</s>", "rouge</s>"],
    ),
    # Jamba: every message <|bom|><|role|> content<|eom|>; the <|eom|> after a reply is its end of turn.
    "jamba": (
        "<s><|bom|><|system|> You are terse.<|eom|><|bom|><|user|> Spell the digit. 6<|eom|>"
        "<|bom|><|assistant|> six<|eom|><|bom|><|user|> Colour in French? red<|eom|>"
        "<|bom|><|assistant|> rouge<|eom|>",
        ["six<|eom|>", "rouge<|eom|>"],
    ),
    # Mistral: the system message opens the first (v1) or the last (v2v3, v3 tekken) user turn.
    "mistral_v1": (
        "<s> [INST] You are terse.\n\nSpell the digit. 6 [/INST] six</s> [INST] Colour in French? red [/INST] rouge</s>",
        ["six</s>", "rouge</s>"],
    ),
    "mistral_v2v3": (
        "<s>[INST] Spell the digit. 6[/INST] six</s>[INST] You are terse.\n\nColour in French? red[/INST] rouge</s>",
        ["six</s>", "rouge</s>"],
    ),
    "mistral_v3_tekken": (
        "<s>[INST]Spell the digit. 6[/INST]six</s>[INST]You are terse.\n\nColour in French? red[/INST]rouge</s>",
        ["six</s>", "rouge</s>"],
    ),
    "mistral_v7_tekken": (
        "<s>[SYSTEM_PROMPT]You are terse.[/SYSTEM_PROMPT][INST]Spell the digit. 6[/INST]six</s>"
        "[INST]Colour in French? red[/INST]rouge</s>",
        ["six</s>", "rouge</s>"],
    ),
}
EXPECTED["gemma3n"] = EXPECTED["gemma3"]


@pytest.fixture(scope="module")
def tok(tokenizer):
    tok = copy.deepcopy(tokenizer)  # the session tokenizer stays as it is
    tok.add_special_tokens(
        {"additional_special_tokens": [*MARKERS, "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]}
    )
    return tok


def chat(tok, messages, **options):
    eot_tokens = options.pop("eot_tokens", None)
    fmt = ChatTemplate(tok, options, eot_tokens=eot_tokens)
    ids, labels = example(fmt.tokenize_rows([{"messages": messages}]), 0)
    return tok.decode(ids), decoded_spans(tok, labels)


def test_every_shipped_name_is_accepted_by_the_config_and_has_a_test():
    # gemma refuses this conversation (system role): its own test below.
    assert set(SHIPPED_CHAT_TEMPLATES) == set(NAMED_TEMPLATES) == {*EXPECTED, "gemma"}
    for name in NAMED_TEMPLATES:
        assert {name, f"tokenizer_default_fallback_{name}"} <= set(CHAT_TEMPLATE_NAMES)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_named_template_renders_the_family_turn_format_and_trains_the_replies(tok, name):
    text, trained = chat(tok, CONVERSATION, chat_template=name)
    assert (text, trained) == EXPECTED[name]


def test_qwen_25_adds_its_default_system_message_when_there_is_none(tok):
    text, trained = chat(tok, CONVERSATION[1:3], chat_template="qwen_25")
    assert text == (
        f"<|im_start|>system\n{QWEN}<|im_end|>\n<|im_start|>user\nSpell the digit. 6<|im_end|>\n"
        "<|im_start|>assistant\nsix<|im_end|>\n"
    )
    assert trained == ["six<|im_end|>"]


def test_gemma_refuses_a_system_message_and_drop_system_message_removes_it(tok):
    with pytest.raises(RowProblem, match="Gemma has no system role"):
        chat(tok, CONVERSATION, chat_template="gemma")
    text, trained = chat(tok, CONVERSATION, chat_template="gemma", drop_system_message=True)
    assert text == (
        "<s><start_of_turn>user\nSpell the digit. 6<end_of_turn>\n<start_of_turn>model\nsix<end_of_turn>\n"
        "<start_of_turn>user\nColour in French? red<end_of_turn>\n<start_of_turn>model\nrouge<end_of_turn>\n"
    )
    assert trained == ["six<end_of_turn>", "rouge<end_of_turn>"]


def test_generation_prompts(tok):
    messages = [{"role": "user", "content": "hi"}]
    render = tok.apply_chat_template

    def prompt(name):
        return render(
            messages, chat_template=NAMED_TEMPLATES[name], tokenize=False, add_generation_prompt=True
        )

    assert prompt("gemma3").endswith("<end_of_turn>\n<start_of_turn>model\n")
    assert prompt("llama4").endswith("<|eot|><|header_start|>assistant<|header_end|>\n\n")
    assert prompt("phi_3").endswith("<|end|>\n<|assistant|>\n")
    assert prompt("gemma4").endswith("<turn|>\n<|turn>model\n<|channel>thought\n<channel|>")
    assert prompt("qwen3").endswith("<|im_end|>\n<|im_start|>assistant\n")
    assert prompt("qwen3_5").endswith("<|im_end|>\n<|im_start|>assistant\n<think>\n\n")
    assert prompt("jamba") == "<s><|bom|><|user|> hi<|eom|><|bom|><|assistant|>"


THINKING = [
    {"role": "user", "content": "Spell the digit. 6"},
    {"role": "assistant", "content": "six", "reasoning_content": "digit to word"},
    {"role": "user", "content": "Colour in French? red"},
    {"role": "assistant", "content": "rouge", "reasoning_content": "French for red"},
]


def test_qwen3_trains_the_reasoning_of_the_turns_it_renders(tok):
    text, trained = chat(tok, THINKING, chat_template="qwen3")
    # Qwen 3 shows reasoning only after the last user message: the first trace is not rendered.
    assert text == (
        "<|im_start|>user\nSpell the digit. 6<|im_end|>\n<|im_start|>assistant\nsix<|im_end|>\n"
        "<|im_start|>user\nColour in French? red<|im_end|>\n"
        "<|im_start|>assistant\n<think>\nFrench for red\n</think>\n\nrouge<|im_end|>\n"
    )
    assert trained == ["six<|im_end|>", "French for red\n</think>\n\nrouge<|im_end|>"]
    # Two replies to one question: both traces are rendered and trained.
    both = [THINKING[0], THINKING[1], {**THINKING[3], "role": "assistant"}]
    _, trained = chat(tok, both, chat_template="qwen3")
    assert trained == [
        "digit to word\n</think>\n\nsix<|im_end|>",
        "French for red\n</think>\n\nrouge<|im_end|>",
    ]


def test_field_thinking_and_template_thinking_key_route_the_trace(tok):
    # Rows keep the trace in `thinking`; a template (gpt-oss style) reads `analysis`.
    rename = {"reasoning_content": "thinking"}
    rows = [{rename.get(key, key): value for key, value in m.items()} for m in THINKING]
    jinja = (
        "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' }}"
        "{% if m['analysis'] is defined %}{{ '[' + m['analysis'] + ']' }}{% endif %}"
        "{{ m['content'] + '<|im_end|>\n' }}{% endfor %}"
    )
    text, trained = chat(
        tok, rows, chat_template_jinja=jinja, field_thinking="thinking", template_thinking_key="analysis"
    )
    assert "<|im_start|>assistant\n[digit to word]six<|im_end|>" in text
    assert trained == ["digit to word]six<|im_end|>", "French for red]rouge<|im_end|>"]
    # Without the mapping the trace stays in the row: nothing reaches the template.
    text, trained = chat(tok, rows, chat_template_jinja=jinja)
    assert "[" not in text and trained == ["six<|im_end|>", "rouge<|im_end|>"]


def test_eot_tokens_name_the_turn_terminator(tokenizer):
    # In the session tokenizer <|end|> is plain text: only eot_tokens makes it the end of turn.
    messages = CONVERSATION[1:3]
    _, trained = chat(tokenizer, messages, chat_template="phi_3")
    assert trained == ["six"]
    _, trained = chat(tokenizer, messages, chat_template="phi_3", eot_tokens=["<|end|>"])
    assert trained == ["six<|end|>"]
    # ... and only the listed ones: <|im_end|> is special, but not the named terminator.
    _, trained = chat(tokenizer, messages, chat_template="chatml", eot_tokens=["<|end|>"])
    assert trained == ["six"]


def test_the_pipeline_passes_the_top_level_eot_tokens(tokenizer):
    cfg = train_config(
        chat_template="phi_3", eot_tokens=["<|end|>"], datasets=[{"path": "x", "type": "chat_template"}]
    )
    fmt = make_format(cfg.datasets[0], "datasets[0]", cfg, tokenizer)
    assert fmt.end_tokens == ["<|end|>"]

"""Axolotl's single-turn instruction variants: `alpaca:<style>`, `alpaca_chat[.load_*]`, `jeopardy`,
`explainchoice`, `concisechoice`, `summarizetldr`.

Each is (which columns make the instruction, input and response) x (the prompt around them); the
prompt texts are Axolotl's, byte for byte, so configs and checkpoints carry over. As with `alpaca`,
the prompt is untrained and the response plus eos are trained; bos as the tokenizer adds it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from kubetune.data.formats.base import PromptFormat, RowProblem, Segment

ALPACA_SYSTEM = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request."
)
ALPACA_SYSTEM_NO_INPUT = "Below is an instruction that describes a task. Write a response that appropriately completes the request."
CONCISE_SYSTEM = (
    "Below is an instruction from a USER that describes a task, paired with an input that provides further "
    "context. The ASSISTANT writes a response that concisely and appropriately completes the request.\n\n"
)
CONCISE_SYSTEM_NO_INPUT = (
    "Below is an instruction from a USER that describes a task. The ASSISTANT writes a response that "
    "appropriately and concisely completes the request.\n\n"
)


@dataclass(frozen=True)
class PromptStyle:
    """How a system text and a turn are laid out: `{system}`, `{instruction}`, `{input}` slots."""

    system: str
    turn: str
    turn_no_input: str


STYLES: dict[str, PromptStyle] = {
    "instruct": PromptStyle(
        "{system}\n\n",
        "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n",
        "### Instruction:\n{instruction}\n\n### Response:\n",
    ),
    "chat": PromptStyle(
        "SYSTEM: {system}\n", "USER: {instruction}\n{input}\nASSISTANT:", "USER: {instruction}\nASSISTANT:"
    ),
    "chatml": PromptStyle(
        "<|im_start|>system\n{system}<|im_end|>\n",
        "<|im_start|>user\n{instruction}\n{input}<|im_end|>\n<|im_start|>assistant\n",
        "<|im_start|>user\n{instruction}<|im_end|>\n<|im_start|>assistant\n",
    ),
    # As Axolotl lays it out: with an input, no newline around it.
    "phi": PromptStyle(
        "<|system|>\n{system}<|end|>\n",
        "<|user|>\n{instruction}<|end|>{input}<|assistant|>",
        "<|user|>\n{instruction}<|end|>\n<|assistant|>\n",
    ),
}
# A style of its own: the chat turns with the system text written as is.
_BARE_CHAT = PromptStyle("{system}", STYLES["chat"].turn, STYLES["chat"].turn_no_input)
_TLDR = PromptStyle(
    "",
    "USER: Summarize the following article as a TL;DR.\n{instruction}\n{input}\nASSISTANT:",
    "USER: Summarize the following article as a TL;DR.\n{instruction}\nASSISTANT:",
)


def _text(row: Mapping[str, Any], column: str, *, optional: bool = False) -> str:
    value = row.get(column)
    if value is None and optional:
        return ""
    if not isinstance(value, str) or (not value and not optional):
        raise RowProblem(f"field {column!r} must be non-empty text")
    return value


def _alpaca_fields(fmt: PromptFormat, row: Mapping[str, Any]) -> tuple[str, str, str]:
    return (
        _text(row, fmt.option("field_instruction", "instruction")),
        _text(row, fmt.option("field_input", "input"), optional=True),
        _text(row, fmt.option("field_output", "output")),
    )


def _choices(fmt: PromptFormat, row: Mapping[str, Any]) -> tuple[str, str, str]:
    choices = row.get("choices")
    if not isinstance(choices, list) or not all(isinstance(c, str) for c in choices):
        raise RowProblem("field 'choices' must be a list of texts")
    answer = "solution" if row.get("solution") is not None else "explanation"
    return _text(row, "question"), "\n".join(f'- "{choice}"' for choice in choices), _text(row, answer)


FIELDS: dict[str, Callable[[PromptFormat, Mapping[str, Any]], tuple[str, str, str]]] = {
    "alpaca": _alpaca_fields,
    "qa": lambda fmt, row: (_text(row, "question"), "", _text(row, "answer")),
    "camel_ai": lambda fmt, row: (_text(row, "message_1"), "", _text(row, "message_2")),
    "jeopardy": lambda fmt, row: (
        _text(row, "question"),
        _text(row, "category", optional=True),
        "what is " + _text(row, "answer"),
    ),
    "choices": _choices,
    "tldr": lambda fmt, row: (_text(row, "article"), "", _text(row, "summary")),
}

REQUIRED_COLUMNS = {
    "qa": ("question", "answer"),
    "camel_ai": ("message_1", "message_2"),
    "jeopardy": ("question", "answer"),
    "choices": ("question", "choices"),
    "tldr": ("article", "summary"),
}


@dataclass(frozen=True)
class Variant:
    fields: str  # a key of FIELDS
    style: PromptStyle
    system: str  # "" = no system text
    system_no_input: str


def _styled(name: str, fields: str, system: str, system_no_input: str) -> dict[str, Variant]:
    """`name` (instruct style) and `name:<style>` for every style."""
    out = {f"{name}:{key}": Variant(fields, style, system, system_no_input) for key, style in STYLES.items()}
    out[name] = out[f"{name}:instruct"]
    return out


_EXPLAIN = "Choose the answer that best answers the question. Explain your reasoning.\n"
_CONCISE = "Choose the answer that best answers the question. Be concise in your response.\n\n"
_CHAT = STYLES["chat"]

VARIANTS: dict[str, Variant] = {
    **{
        k: v
        for k, v in _styled("alpaca", "alpaca", ALPACA_SYSTEM, ALPACA_SYSTEM_NO_INPUT).items()
        if k != "alpaca"
    },
    "alpaca_chat": Variant("alpaca", _CHAT, ALPACA_SYSTEM, ALPACA_SYSTEM_NO_INPUT),
    "alpaca_chat.load": Variant("alpaca", _CHAT, ALPACA_SYSTEM, ALPACA_SYSTEM_NO_INPUT),
    "alpaca_chat.load_concise": Variant("alpaca", _CHAT, CONCISE_SYSTEM, CONCISE_SYSTEM_NO_INPUT),
    "alpaca_chat.load_qa": Variant("qa", _CHAT, CONCISE_SYSTEM, CONCISE_SYSTEM_NO_INPUT),
    "alpaca_chat.load_camel_ai": Variant("camel_ai", _CHAT, CONCISE_SYSTEM, CONCISE_SYSTEM_NO_INPUT),
    "alpaca_chat.load_no_prompt": Variant("alpaca", _CHAT, "", ""),
    **_styled("jeopardy", "jeopardy", ALPACA_SYSTEM, ALPACA_SYSTEM_NO_INPUT),
    **_styled("explainchoice", "choices", _EXPLAIN, _EXPLAIN),
    "concisechoice": Variant("choices", _BARE_CHAT, _CONCISE, _CONCISE),
    "summarizetldr": Variant("tldr", _TLDR, "", ""),
}
# The names read the dataset's field_instruction / field_input / field_output.
ALPACA_FIELD_VARIANTS = frozenset(name for name, variant in VARIANTS.items() if variant.fields == "alpaca")


class InstructionVariant(PromptFormat):
    """One of VARIANTS; `variant` is set on the generated subclass (variant_format)."""

    variant: Variant

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.variant.fields == "alpaca":
            self.required_fields = (
                self.option("field_instruction", "instruction"),
                self.option("field_output", "output"),
            )
        else:
            self.required_fields = REQUIRED_COLUMNS[self.variant.fields]

    def prompt(self, instruction: str, extra: str) -> str:
        style, variant = self.variant.style, self.variant
        system = variant.system if extra else variant.system_no_input
        head = style.system.format(system=system) if system else ""
        if extra:
            return head + style.turn.format(instruction=instruction, input=extra)
        return head + style.turn_no_input.format(instruction=instruction)

    def segments(self, row: Mapping[str, Any]) -> list[Segment]:
        instruction, extra, output = FIELDS[self.variant.fields](self, row)
        return [
            (self.bos_ids, False),
            (self.prompt(instruction, extra), False),
            (output, True),
            (self.eos_ids, True),
        ]


def variant_formats() -> dict[str, type[InstructionVariant]]:
    """type name -> its format class."""
    return {
        name: type(f"InstructionVariant[{name}]", (InstructionVariant,), {"variant": variant})
        for name, variant in VARIANTS.items()
    }

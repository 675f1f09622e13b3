"""The single-turn formats: alpaca, completion, input_output, and pretokenized rows."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from kubetune.data.formats.base import PromptFormat, RowProblem, Segment, TokenizedExamples, encode_texts

# Axolotl's alpaca prompts, byte for byte, so configs and checkpoints carry over.
ALPACA_WITH_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
)
ALPACA_NO_INPUT = (
    "Below is an instruction that describes a task. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Response:\n"
)


def _text(row: Mapping[str, Any], field: str, *, optional: bool = False) -> str:
    value = row.get(field)
    if value is None:
        if optional:
            return ""
        raise RowProblem(f"field {field!r} is empty")
    if not isinstance(value, str):
        raise RowProblem(f"field {field!r} must be text, got {type(value).__name__}")
    return value


class Alpaca(PromptFormat):
    """instruction [+ input] -> output. Trained: the output and the eos after it."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.instruction_field = self.option("field_instruction", "instruction")
        self.input_field = self.option("field_input", "input")
        self.output_field = self.option("field_output", "output")
        self.required_fields = (self.instruction_field, self.output_field)

    #: reuse the prompt's fixed opening tokens where provably exact (formats/junction.py)
    prefix_reuse = True

    def _prefix_splits(self):
        """(with-input, no-input) PrefixSplit, or None where the tokenizer does not qualify."""
        if not hasattr(self, "_splits"):
            from kubetune.data.formats.junction import PrefixSplit, splittable

            backend = getattr(self.tokenizer, "backend_tokenizer", None)
            self._splits = None
            if self.prefix_reuse and backend is not None and splittable(backend):
                self._splits = tuple(
                    PrefixSplit(backend, template[: template.index("{instruction}")])
                    for template in (ALPACA_WITH_INPUT, ALPACA_NO_INPUT)
                )
        return self._splits

    def _batched_segments(self, rows, first_index: int) -> TokenizedExamples:
        splits = self._prefix_splits()
        if splits is None:
            return super()._batched_segments(rows, first_index)
        with_input, no_input = splits
        rest_with = ALPACA_WITH_INPUT[len(with_input.prefix) :]
        rest_without = ALPACA_NO_INPUT[len(no_input.prefix) :]
        slots: dict[str, int] = {}  # identical texts (repeated instructions, outputs) encoded once
        texts: list[str] = []
        plan: list[tuple[list[int], int, int]] = []
        joint: list[int] = []
        for index, row in enumerate(rows, first_index):
            try:
                instruction = _text(row, self.instruction_field)
                extra = _text(row, self.input_field, optional=True)
                output = _text(row, self.output_field)
            except RowProblem as problem:
                raise RowProblem(problem.message, index) from None
            except (KeyError, TypeError, IndexError) as exc:
                raise RowProblem(f"{type(exc).__name__}: {exc}", index) from exc
            if extra:
                split, rest = with_input, rest_with.format(instruction=instruction, input=extra)
            else:
                split, rest = no_input, rest_without.format(instruction=instruction)
            if split.ok(rest):
                prefix_ids = split.prefix_ids
            else:  # the junction is not a clean boundary: the whole prompt in one call
                prefix_ids, rest = joint, split.prefix + rest
            for text in (rest, output):
                if text not in slots:
                    slots[text] = len(texts)
                    texts.append(text)
            plan.append((prefix_ids, slots[rest], slots[output]))
        encoded = encode_texts(self.tokenizer, texts)
        bos, eos = self.bos_ids, self.eos_ids
        segment_ids: list[Sequence[int]] = []
        for prefix_ids, prompt_slot, output_slot in plan:
            segment_ids += (bos, prefix_ids, encoded[prompt_slot], encoded[output_slot], eos)
        return self._assemble(segment_ids, [False, False, False, True, True] * len(plan), [5] * len(plan))

    def segments(self, row: Mapping[str, Any]) -> list[Segment]:
        instruction = _text(row, self.instruction_field)
        extra = _text(row, self.input_field, optional=True)
        if extra:
            prompt = ALPACA_WITH_INPUT.format(instruction=instruction, input=extra)
        else:
            prompt = ALPACA_NO_INPUT.format(instruction=instruction)
        return [
            (self.bos_ids, False),
            (prompt, False),
            (_text(row, self.output_field), True),
            (self.eos_ids, True),
        ]


class Completion(PromptFormat):
    """Raw text (`field`, default "text"), all of it trained, eos appended."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.text_field = self.option("field", "text")
        self.required_fields = (self.text_field,)

    def segments(self, row: Mapping[str, Any]) -> list[Segment]:
        return [(self.bos_ids, False), (_text(row, self.text_field), True), (self.eos_ids, True)]


class InputOutput(PromptFormat):
    """`segments: [{"text": ..., "label": true|false}, ...]`, tokenized as written.

    Like Axolotl's template-free format, nothing is added: put bos/eos in the texts yourself.
    """

    required_fields = ("segments",)

    def segments(self, row: Mapping[str, Any]) -> list[Segment]:
        pieces = row.get("segments")
        if not isinstance(pieces, list) or not pieces:
            raise RowProblem("'segments' must be a non-empty list of {text, label} objects")
        out = []
        for number, piece in enumerate(pieces):
            if not isinstance(piece, Mapping) or not isinstance(piece.get("text"), str):
                raise RowProblem(f"segments[{number}] needs a 'text' string")
            label = piece.get("label", True)
            if not isinstance(label, bool):
                raise RowProblem(f"segments[{number}].label must be true or false")
            out.append((piece["text"], label))
        return out


class Pretokenized(PromptFormat):
    """Rows that already hold `input_ids` (and optionally `labels`); taken as they are."""

    required_fields = ("input_ids",)

    def tokenize_row(self, row: Mapping[str, Any]) -> dict[str, list[int]]:
        input_ids = row.get("input_ids")
        if not input_ids:
            raise RowProblem("'input_ids' is empty")
        labels = row.get("labels")
        if labels is None:  # given labels are the user's masking decision, kept as they are
            labels = input_ids
        if len(labels) != len(input_ids):
            raise RowProblem(f"'labels' has {len(labels)} entries but 'input_ids' has {len(input_ids)}")
        return {"input_ids": list(input_ids), "labels": list(labels)}

"""KTO datasets (`rl: kto`, Axolotl's kto types): one completion per row and a boolean `label`.

`tokenize_rows` returns TWO examples per row, like the pair formats (kubetune.data.pairs): the
row's prompt + completion, then the row's prompt + the completion of the previous row of the same
batch (the first row takes the last row's): the mismatched "KL" completion from which KTO estimates
its reference point, built as trl's KTOTrainer builds it (completions shifted by one within a batch).
Only completions are trained. `flags` holds each example's row label (True = desirable).

Types are `<template>.<layout>` (Axolotl's kto/chatml.py and kto/llama3.py):
  templates: `chatml` (<|im_start|>role ... <|im_end|>) and `llama3` (<|start_header_id|>role ...
  <|eot_id|>); the prompt ends with the assistant's header, the completion with the end of turn.
  layouts (columns): `argilla` (system?, instruction, completion), `intel` (system?, question,
  completion), `prompt_pairs` and `ultra` (system?, prompt, completion), `argilla_chat` (completion:
  a conversation whose last message is the answer; the messages before it are the prompt).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from kubetune.data.formats.base import PromptFormat, RowProblem, Segment, TokenizedExamples

TEMPLATES = {  # (turn start: role -> text, turn end)
    "chatml": (lambda role: f"<|im_start|>{role}\n", "<|im_end|>"),
    "llama3": (lambda role: f"<|start_header_id|>{role}<|end_header_id|>\n\n", "<|eot_id|>"),
}
PROMPT_COLUMN = {"argilla": "instruction", "intel": "question", "prompt_pairs": "prompt", "ultra": "prompt"}
LAYOUTS = (*PROMPT_COLUMN, "argilla_chat")


class KtoCompletions(PromptFormat):
    """Two examples per row (the completion, the KL completion); subclasses fix template and layout."""

    template: str = "chatml"
    layout: str = "ultra"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        prompt = PROMPT_COLUMN.get(self.layout)
        self.required_fields = ("completion", "label") if prompt is None else (prompt, "completion", "label")

    def _turn(self, role: str, text: str) -> str:
        start, end = TEMPLATES[self.template]
        return f"{start(role)}{text}{end}" + ("\n" if self.template == "chatml" else "")

    def prompt_and_completion(self, row: Mapping[str, Any]) -> tuple[str, str]:
        start, end = TEMPLATES[self.template]
        if self.layout == "argilla_chat":
            conversation = row.get("completion")
            if (
                not isinstance(conversation, Sequence)
                or isinstance(conversation, str)
                or len(conversation) < 2
            ):
                raise RowProblem("'completion' must be a conversation of at least two messages")
            *history, answer = conversation
            turns = [(m.get("role"), m.get("content")) for m in history]
            response = answer.get("content") if isinstance(answer, Mapping) else None
        else:
            turns = [("system", row.get("system"))] if row.get("system") else []
            turns.append(("user", row.get(PROMPT_COLUMN[self.layout])))
            response = row.get("completion")
        for role, text in turns:
            if not isinstance(role, str) or not isinstance(text, str):
                raise RowProblem("every prompt message needs a string role and content")
        if not isinstance(response, str) or not response:
            raise RowProblem("the completion must be a non-empty string")
        prompt = "".join(self._turn(role, text) for role, text in turns) + start("assistant")
        return prompt, response + end

    def segments(self, item: tuple[str, str]) -> list[Segment]:
        prompt, completion = item
        bos = (
            self.bos_ids
            if not (self.tokenizer.bos_token and prompt.startswith(self.tokenizer.bos_token))
            else []
        )
        return [(bos, False), (prompt, False), (completion, True)]

    def tokenize_rows(self, rows: Sequence[Mapping[str, Any]], first_index: int = 0) -> TokenizedExamples:
        if self.train_on_inputs:
            raise RowProblem("train_on_inputs does not apply to KTO rows (only completions are scored)")
        texts, labels = [], []
        for index, row in enumerate(rows, first_index):
            label = row.get("label")
            if not isinstance(label, bool | np.bool_):
                raise RowProblem(f"'label' must be true (desirable) or false, not {label!r}", index)
            labels.append(bool(label))
            try:
                texts.append(self.prompt_and_completion(row))
            except RowProblem as problem:
                raise RowProblem(problem.message, index) from None
        items = []
        for index, (prompt, completion) in enumerate(texts):
            items += [(prompt, completion), (prompt, texts[index - 1][1])]  # [-1]: the last row's
        examples = super().tokenize_rows(items, 0)
        examples.flags = np.repeat(np.asarray(labels, dtype=bool), 2)
        return examples


KTO_FORMATS: dict[str, type[KtoCompletions]] = {
    f"{template}.{layout}": type(
        f"Kto_{template}_{layout}", (KtoCompletions,), {"template": template, "layout": layout}
    )
    for template in TEMPLATES
    for layout in LAYOUTS
}

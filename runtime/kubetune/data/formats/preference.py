"""Preference datasets (Axolotl's `rl:` dataset types): each row -> a chosen and a rejected example.

`tokenize_rows` returns TWO examples per row, in order: prompt + chosen, then prompt + rejected;
only the completion is trained (labels -100 on the prompt), so a pair loss scores exactly the
completions. The prompt is tokenized on its own, as in the SFT formats, so both examples start
with the same prompt tokens. kubetune.train.preference reads a pair as one packed row of the two.

Types:
  * `chat_template.default`: `field_messages` (default `messages`) holds the prompt conversation;
    `field_chosen` / `field_rejected` (defaults `chosen` / `rejected`) each hold the answer, an
    assistant message (role/content, mapped like the messages) or a plain string. The conversation
    is rendered by the chat template with the generation prompt; the completion is what the
    rendering of conversation + answer adds, up to and including its end-of-turn token.
  * `chat_template.argilla`: `prompt` (string), `system` (optional), and `chosen` / `rejected`, each a
    conversation whose last message is the answer, rendered as chat_template.default renders.
  * `chatml.intel`: columns `system` (optional), `question`, `chosen`, `rejected` (strings) in ChatML.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from kubetune.data.formats.base import PromptFormat, RowProblem, Segment, TokenizedExamples
from kubetune.data.formats.chat_template import ChatTemplate

SIDES = ("chosen", "rejected")


class PreferencePairs(PromptFormat):
    """Two examples per row (chosen, rejected); subclasses give (prompt, completion) texts per side."""

    def prompt_and_completion(self, row: Mapping[str, Any], side: str) -> tuple[str, str]:
        raise NotImplementedError

    def segments(self, row_side: tuple[Mapping[str, Any], str]) -> list[Segment]:
        row, side = row_side
        prompt, completion = self.prompt_and_completion(row, side)
        if not completion:
            raise RowProblem(f"the {side} answer is empty")
        bos = (
            self.bos_ids
            if not (self.tokenizer.bos_token and prompt.startswith(self.tokenizer.bos_token))
            else []
        )
        return [(bos, False), (prompt, False), (completion, True)]

    def tokenize_rows(self, rows: Sequence[Mapping[str, Any]], first_index: int = 0) -> TokenizedExamples:
        if self.train_on_inputs:
            raise RowProblem(
                "train_on_inputs does not apply to preference pairs (only completions are scored)"
            )
        sides = [(row, side) for row in rows for side in SIDES]
        try:
            return super().tokenize_rows(sides, 2 * first_index)
        except RowProblem as problem:  # the index of the row, not of the example
            raise RowProblem(problem.message, None if problem.row is None else problem.row // 2) from None


class ChatTemplatePairs(ChatTemplate, PreferencePairs):
    """`type: chat_template.default`: a conversation prompt and two assistant answers."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.chosen_field = self.option("field_chosen", "chosen")
        self.rejected_field = self.option("field_rejected", "rejected")
        self.required_fields = (self.messages_field, self.chosen_field, self.rejected_field)

    # It renders with ChatTemplate but tokenizes (row, side) items, so it does not take ChatTemplate's rows.
    segments = PreferencePairs.segments  # type: ignore[assignment]
    tokenize_rows = PreferencePairs.tokenize_rows

    def prompt_messages(self, row: Mapping[str, Any]) -> list[dict[str, str]]:
        return [{"role": m["role"], "content": m["content"]} for m in self.messages(row)]

    def _answer(self, row: Mapping[str, Any], side: str) -> str:
        field = self.chosen_field if side == "chosen" else self.rejected_field
        value = row.get(field)
        if isinstance(value, Sequence) and not isinstance(value, str) and value:
            value = value[-1]  # a conversation ending with the answer (argilla's chosen / rejected)
        if isinstance(value, Mapping):
            value = value.get(self.content_field)
        if not isinstance(value, str):
            raise RowProblem(
                f"{field!r} must be an assistant message with a string {self.content_field!r}, or a string"
            )
        return value

    def prompt_and_completion(self, row: Mapping[str, Any], side: str) -> tuple[str, str]:
        from jinja2 import TemplateError

        messages = self.prompt_messages(row)
        answer = self._answer(row, side)
        try:
            prompt = self.tokenizer.apply_chat_template(
                messages, chat_template=self.template, tokenize=False, add_generation_prompt=True
            )
            full = self.tokenizer.apply_chat_template(
                [*messages, {"role": "assistant", "content": answer}],
                chat_template=self.template,
                tokenize=False,
            )
        except TemplateError as exc:
            raise RowProblem(f"the chat template refused this conversation: {exc}") from exc
        if not full.startswith(prompt):
            raise RowProblem(
                "the chat template renders the answer's turn differently from its generation prompt"
            )
        start = full.find(answer, len(prompt))
        if start < 0:
            raise RowProblem(f"the chat template does not render the {side} answer as written")
        end = start + len(answer)
        end += self.end_of_turn(full, end)
        return prompt, full[len(prompt) : end]


class ChatTemplateArgilla(ChatTemplatePairs):
    """`type: chat_template.argilla` (Axolotl's ORPO type, argilla/ultrafeedback-binarized-preferences-
    cleaned): `prompt` (a string), `system` (optional), and `chosen` / `rejected` (or field_chosen /
    field_rejected), each a conversation whose last message is the answer."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.required_fields = ("prompt", self.chosen_field, self.rejected_field)

    def prompt_messages(self, row: Mapping[str, Any]) -> list[dict[str, str]]:
        if not isinstance(row.get("prompt"), str):
            raise RowProblem("'prompt' must be a string")
        system = row.get("system")
        return [{"role": "system", "content": system}] * bool(system) + [
            {"role": "user", "content": row["prompt"]}
        ]


class ChatmlIntel(PreferencePairs):
    """`type: chatml.intel`: Intel/orca_dpo_pairs columns (system, question, chosen, rejected) in ChatML."""

    required_fields = ("question", "chosen", "rejected")

    def prompt_and_completion(self, row: Mapping[str, Any], side: str) -> tuple[str, str]:
        system = row.get("system") or ""
        for key in ("question", side):
            if not isinstance(row.get(key), str):
                raise RowProblem(f"{key!r} must be a string")
        prompt = f"<|im_start|>user\n{row['question']}<|im_end|>\n<|im_start|>assistant\n"
        if system:
            prompt = f"<|im_start|>system\n{system}<|im_end|>\n" + prompt
        return prompt, f"{row[side]}<|im_end|>"


PREFERENCE_FORMATS: dict[str, type[PreferencePairs]] = {
    "chat_template.default": ChatTemplatePairs,
    "chat_template.argilla": ChatTemplateArgilla,
    "chatml.intel": ChatmlIntel,
}

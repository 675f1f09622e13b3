"""`type: chat_template`: conversations rendered by a chat template, assistant turns trained.

Rows hold a list of messages (OpenAI style `{"role", "content"}` by default; ShareGPT style
`{"from", "value"}` via `field_messages` / `message_field_role` / `message_field_content` and the
`roles` mapping). The conversation is rendered once by the template; each message's content is
located exactly by rendering a second time with unique placeholders in place of the contents.
The trained spans are the contents of messages whose role is in `roles_to_train` (default
`[assistant]`; a message's own boolean `training` field overrides), plus the end-of-turn token
that follows them as `train_on_eos` says:
  turn (default): after every trained turn; last: after the last trained turn only;
  all: after every turn; none: never.
An end-of-turn token is any special token of the tokenizer, or with the top-level `eot_tokens`
exactly the strings listed there. A message's reasoning trace (`field_thinking`, default
`reasoning_content`) reaches the template under `template_thinking_key` (default
`reasoning_content`, what qwen3 reads); in a trained message it is trained from its first
character through the content, the template's markup between them included. Where the template
leaves a trace out (qwen3 shows only those after the last user message), it is not trained.
`drop_system_message: true` removes system messages before rendering.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from kubetune.data.formats.base import PromptFormat, RowProblem, Segment
from kubetune.data.formats.named_templates import NAMED_TEMPLATES

TEMPLATE_CHOICES = ("tokenizer_default", *NAMED_TEMPLATES, "tokenizer_default_fallback_<name>", "jinja")

DEFAULT_ROLES = {
    "user": ["user", "human"],
    "assistant": ["assistant", "gpt", "model"],
    "system": ["system"],
    "tool": ["tool"],
}
TRAIN_ON_EOS = ("turn", "last", "all", "none")

# Private-use code points: never produced by a template, so their positions are unambiguous.
_SENTINEL = re.compile("\ue000([0-9]+)\ue001")


def resolve_chat_template(choice: str | None, tokenizer, jinja: str | None = None) -> str:
    """The Jinja source for a `chat_template:` value; ValueError saying what to set otherwise."""
    choice = choice or "tokenizer_default"
    if "{{" in choice or "{%" in choice:  # the template text itself
        return choice
    if choice in NAMED_TEMPLATES:
        return NAMED_TEMPLATES[choice]
    if choice == "jinja":
        if not jinja:
            raise ValueError("chat_template: jinja needs the template text in chat_template_jinja")
        return jinja
    if choice == "tokenizer_default" or choice.startswith("tokenizer_default_fallback_"):
        if getattr(tokenizer, "chat_template", None):
            return tokenizer.chat_template
        fallback = choice.removeprefix("tokenizer_default").removeprefix("_fallback_")
        if fallback in NAMED_TEMPLATES:
            return NAMED_TEMPLATES[fallback]
        raise ValueError(
            "the tokenizer has no chat template; set chat_template: chatml (or llama3, or jinja "
            "with chat_template_jinja)"
        )
    raise ValueError(f"unknown chat_template {choice!r}; choose one of {', '.join(TEMPLATE_CHOICES)}")


class ChatTemplate(PromptFormat):
    def __init__(self, *args, eot_tokens: list[str] | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        mappings = self.option("message_property_mappings", {}) or {}
        self.messages_field = self.option("field_messages", "messages")
        self.role_field = self.option("message_field_role", mappings.get("role", "role"))
        self.content_field = self.option("message_field_content", mappings.get("content", "content"))
        self.training_field = self.option("message_field_training", "training")
        # A message's reasoning trace: read from `field_thinking`, handed to the template as
        # `template_thinking_key` (the name the template reads); trained with the message.
        self.thinking_field = self.option("field_thinking", "reasoning_content")
        self.thinking_key = self.option("template_thinking_key", "reasoning_content")
        self.drop_system = bool(self.option("drop_system_message", False))
        self.required_fields = (self.messages_field,)
        self.roles_to_train = set(self.option("roles_to_train", ["assistant"]))
        self.train_on_eos = self.option("train_on_eos", "turn")
        if self.train_on_eos not in TRAIN_ON_EOS:
            raise ValueError(
                f"train_on_eos must be one of {', '.join(TRAIN_ON_EOS)}, not {self.train_on_eos!r}"
            )
        roles = {**DEFAULT_ROLES, **(self.option("roles", {}) or {})}
        self.role_of = {source: target for target, sources in roles.items() for source in sources}
        self.setup_template(eot_tokens)

    def setup_template(self, eot_tokens: list[str] | None) -> None:
        """The Jinja template and the strings that end a turn (formats/mistral_chat.py has neither)."""
        # The dataset's own template wins over the top-level one; a Jinja text implies `jinja`.
        jinja = self.option("chat_template_jinja")
        choice = self.option("chat_template", "jinja" if jinja else None) or self.chat_template
        self.template = resolve_chat_template(choice, self.tokenizer, jinja)
        if eot_tokens:
            # `eot_tokens`: exactly these strings end a turn (the template's turn terminator when
            # it is not a special token, or to exclude other special tokens).
            ends = {str(token) for token in eot_tokens if token}
        else:
            ends = {str(token) for token in getattr(self.tokenizer, "all_special_tokens", [])}
            ends |= {
                t.content for t in getattr(self.tokenizer, "added_tokens_decoder", {}).values() if t.special
            }
        # Longest first, so "<|eot_id|>" wins over a shorter token it starts with.
        self.end_tokens = sorted((token for token in ends if token), key=len, reverse=True)
        self._marked: dict[tuple, str] = {}  # (role, has thinking) sequence -> rendering with placeholders

    def messages(self, row: Mapping[str, Any]) -> list[dict[str, Any]]:
        raw = row.get(self.messages_field)
        if not isinstance(raw, list) or not raw:
            raise RowProblem(f"{self.messages_field!r} must be a non-empty list of messages")
        messages = []
        for number, message in enumerate(raw):
            if not isinstance(message, Mapping):
                raise RowProblem(f"{self.messages_field}[{number}] is not an object")
            role, content = message.get(self.role_field), message.get(self.content_field)
            if not isinstance(role, str) or not isinstance(content, str):
                raise RowProblem(
                    f"{self.messages_field}[{number}] needs string fields {self.role_field!r} and "
                    f"{self.content_field!r} (map others with message_field_role / message_field_content)"
                )
            thinking = message.get(self.thinking_field)
            thinking = thinking if isinstance(thinking, str) and thinking else None
            for text in (content, thinking or ""):
                if "\ue000" in text or "\ue001" in text:
                    raise RowProblem(
                        f"{self.messages_field}[{number}] contains reserved characters U+E000/U+E001"
                    )
            role = self.role_of.get(role, role)
            if self.drop_system and role == "system":
                continue
            training = message.get(self.training_field)
            trained = training if isinstance(training, bool) else role in self.roles_to_train
            messages.append({"role": role, "content": content, "thinking": thinking, "trained": trained})
        if not messages:
            raise RowProblem("no messages are left once the system messages are dropped")
        return messages

    def render(self, messages: list[dict[str, Any]]) -> str:
        from jinja2 import TemplateError

        plain = []
        for m in messages:
            plain.append({"role": m["role"], "content": m["content"]})
            if m["thinking"] is not None:
                plain[-1][self.thinking_key] = m["thinking"]
        try:
            return self.tokenizer.apply_chat_template(plain, chat_template=self.template, tokenize=False)
        except TemplateError as exc:
            raise RowProblem(f"the chat template refused this conversation: {exc}") from exc

    def content_spans(self, messages: list[dict[str, Any]], text: str) -> list[tuple[int, int, int | None]]:
        """(start, end, thinking start) of each message's content inside `text`, the real rendering;
        thinking start is where its reasoning begins, None when it has none or the template drops it."""
        # Placeholder k is message k's content, len(messages) + k its reasoning.
        n = len(messages)
        key = tuple((m["role"], m["thinking"] is not None) for m in messages)
        marked = self._marked.get(key)
        if marked is None:
            # With placeholders for contents the rendering depends on the roles alone: once per pattern.
            marked = self.render(
                [
                    {
                        **m,
                        "content": f"\ue000{k}\ue001",
                        "thinking": None if m["thinking"] is None else f"\ue000{n + k}\ue001",
                    }
                    for k, m in enumerate(messages)
                ]
            )
            self._marked[key] = marked
        for transform in (None, str.strip):  # templates like llama3's trim the content
            spans: dict[int, list[tuple[int, int]]] = {}
            pieces, cursor, position = [], 0, 0
            for match in _SENTINEL.finditer(marked):
                scaffold = marked[cursor : match.start()]
                k = int(match.group(1))
                source = messages[k % n]["content" if k < n else "thinking"]
                content = transform(source) if transform else source
                position += len(scaffold)
                spans.setdefault(k, []).append((position, position + len(content)))
                position += len(content)
                pieces += [scaffold, content]
                cursor = match.end()
            pieces.append(marked[cursor:])
            once = all(len(found) == 1 for found in spans.values())
            if "".join(pieces) == text and once and all(k in spans for k in range(n)):
                return [(*spans[k][0], spans[n + k][0][0] if n + k in spans else None) for k in range(n)]
        raise RowProblem(
            "the chat template changes message contents, so trained spans cannot be located exactly; "
            "use a named chat_template (chatml, llama3, ...), or a template that inserts each content verbatim"
        )

    def end_of_turn(self, text: str, position: int) -> int:
        """Length of the special token right after a message's content (its end of turn), or 0."""
        for token in self.end_tokens:
            if text.startswith(token, position):
                return len(token)
        return 0

    def segments(self, row: Mapping[str, Any]) -> list[Segment]:
        messages = self.messages(row)
        text = self.render(messages)
        spans = self.content_spans(messages, text)
        trained_turns = [k for k, m in enumerate(messages) if m["trained"]]
        marks: list[tuple[int, int]] = []  # trained character ranges
        for k, (start, end, thinking) in enumerate(spans):
            trained = messages[k]["trained"]
            if trained:
                # A reasoning trace is the turn's own output: from its start through the content.
                marks.append((start if thinking is None or thinking > start else thinking, end))
            eot = self.end_of_turn(text, end)
            if eot and self._train_eos(k, trained, trained_turns):
                marks.append((end, end + eot))
        segments: list[tuple[str, bool]] = []  # text only: returned as Segments
        cursor = 0
        for start, end in marks:
            if start > cursor:
                segments.append((text[cursor:start], False))
            if end > start:
                if segments and segments[-1][1] and start == cursor:
                    segments[-1] = (segments[-1][0] + text[start:end], True)
                else:
                    segments.append((text[start:end], True))
            cursor = max(cursor, end)
        if cursor < len(text):
            segments.append((text[cursor:], False))
        return [*segments]

    def _train_eos(self, turn: int, trained: bool, trained_turns: list[int]) -> bool:
        if self.train_on_eos == "all":
            return True
        if self.train_on_eos == "turn":
            return trained
        if self.train_on_eos == "last":
            return bool(trained_turns) and turn == trained_turns[-1]
        return False

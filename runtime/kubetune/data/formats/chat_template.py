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
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from kubetune.data.formats.base import PromptFormat, RowProblem, Segment

CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
LLAMA3 = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'"
    " + message['content'] | trim + '<|eot_id|>' %}"
    "{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}"
    "{{ content }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)
NAMED_TEMPLATES = {"chatml": CHATML, "llama3": LLAMA3}
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
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        mappings = self.option("message_property_mappings", {}) or {}
        self.messages_field = self.option("field_messages", "messages")
        self.role_field = self.option("message_field_role", mappings.get("role", "role"))
        self.content_field = self.option("message_field_content", mappings.get("content", "content"))
        self.training_field = self.option("message_field_training", "training")
        self.required_fields = (self.messages_field,)
        self.roles_to_train = set(self.option("roles_to_train", ["assistant"]))
        self.train_on_eos = self.option("train_on_eos", "turn")
        if self.train_on_eos not in TRAIN_ON_EOS:
            raise ValueError(
                f"train_on_eos must be one of {', '.join(TRAIN_ON_EOS)}, not {self.train_on_eos!r}"
            )
        roles = {**DEFAULT_ROLES, **(self.option("roles", {}) or {})}
        self.role_of = {source: target for target, sources in roles.items() for source in sources}
        # The dataset's own template wins over the top-level one; a Jinja text implies `jinja`.
        jinja = self.option("chat_template_jinja")
        choice = self.option("chat_template", "jinja" if jinja else None) or self.chat_template
        self.template = resolve_chat_template(choice, self.tokenizer, jinja)
        specials = {str(token) for token in getattr(self.tokenizer, "all_special_tokens", [])}
        specials |= {
            t.content for t in getattr(self.tokenizer, "added_tokens_decoder", {}).values() if t.special
        }
        # Longest first, so "<|eot_id|>" wins over a shorter special token it starts with.
        self.end_tokens = sorted((token for token in specials if token), key=len, reverse=True)
        self._marked: dict[tuple[str, ...], str] = {}  # role sequence -> rendering with placeholders

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
            if "\ue000" in content or "\ue001" in content:
                raise RowProblem(
                    f"{self.messages_field}[{number}] contains reserved characters U+E000/U+E001"
                )
            role = self.role_of.get(role, role)
            training = message.get(self.training_field)
            trained = training if isinstance(training, bool) else role in self.roles_to_train
            messages.append({"role": role, "content": content, "trained": trained})
        return messages

    def render(self, messages: list[dict[str, Any]]) -> str:
        from jinja2 import TemplateError

        plain = [{"role": m["role"], "content": m["content"]} for m in messages]
        try:
            return self.tokenizer.apply_chat_template(plain, chat_template=self.template, tokenize=False)
        except TemplateError as exc:
            raise RowProblem(f"the chat template refused this conversation: {exc}") from exc

    def content_spans(self, messages: list[dict[str, Any]], text: str) -> list[tuple[int, int]]:
        """(start, end) of each message's content inside `text`, the real rendering."""
        roles = tuple(m["role"] for m in messages)
        marked = self._marked.get(roles)
        if marked is None:
            # With placeholders for contents the rendering depends on the roles alone: once per pattern.
            marked = self.render([{**m, "content": f"\ue000{k}\ue001"} for k, m in enumerate(messages)])
            self._marked[roles] = marked
        for transform in (None, str.strip):  # templates like llama3's trim the content
            spans, pieces, cursor, position = [], [], 0, 0
            for match in _SENTINEL.finditer(marked):
                scaffold = marked[cursor : match.start()]
                content = messages[int(match.group(1))]["content"]
                content = transform(content) if transform else content
                position += len(scaffold)
                spans.append((int(match.group(1)), position, position + len(content)))
                position += len(content)
                pieces += [scaffold, content]
                cursor = match.end()
            pieces.append(marked[cursor:])
            if "".join(pieces) == text and sorted(k for k, _, _ in spans) == list(range(len(messages))):
                return [(start, end) for _, start, end in sorted(spans)]
        raise RowProblem(
            "the chat template changes message contents, so trained spans cannot be located exactly; "
            "use chat_template: chatml or llama3, or a template that inserts each content verbatim"
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
        for k, (start, end) in enumerate(spans):
            trained = messages[k]["trained"]
            if trained:
                marks.append((start, end))
            eot = self.end_of_turn(text, end)
            if eot and self._train_eos(k, trained, trained_turns):
                marks.append((end, end + eot))
        segments: list[Segment] = []
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
        return segments

    def _train_eos(self, turn: int, trained: bool, trained_turns: list[int]) -> bool:
        if self.train_on_eos == "all":
            return True
        if self.train_on_eos == "turn":
            return trained
        if self.train_on_eos == "last":
            return bool(trained_turns) and turn == trained_turns[-1]
        return False

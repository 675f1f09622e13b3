"""`type: chat_template` with `tokenizer_use_mistral_common: true`: conversations encoded by mistral-common.

Mistral's models define their turn format in code (mistral-common's chat-completion encoder, one
per tokenizer version), not in a Jinja template, so the rows are never rendered to text: the
whole conversation is encoded to token ids by the encoder itself, exactly as Mistral's inference
stack encodes it. The trained spans are the assistant turns, as Axolotl masks them: each trained
assistant message's own tokens (its reasoning chunks, its text) and the `</s>` the encoder ends
it with (`train_on_eos`: turn / last / all / none, as for Jinja templates).

An assistant message's own tokens are located without assuming anything about the format: the
encoder is asked for a two-message conversation (a probe user message, then the assistant
message) twice more, with the assistant's content replaced by two different placeholders; the
tokens after the longest prefix the real and the placeholder encodings share are the message's
own. In the full conversation, the k-th assistant message ends at the k-th `</s>` (only an
assistant message ends with it; text never encodes to a control token), and its own tokens must
end there: a row where they do not is refused rather than trained on a guess.

Message contents are strings, or lists of chunks `{"type": "text", "text": ...}` and
`{"type": "thinking", "thinking": ...}` (Magistral-style reasoning, for tokenizers that have
[THINK]); a string reasoning trace in `field_thinking` (default `reasoning_content`) becomes a
thinking chunk before the text. Only assistant messages can be trained.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from kubetune.data.formats.base import IGNORE_INDEX, RowProblem
from kubetune.data.formats.chat_template import ChatTemplate

CHUNK_TYPES = {"text": "text", "thinking": "thinking"}  # chunk type -> the key holding its text
_PROBE_USER = {"role": "user", "content": "?"}
# Two placeholders whose first characters differ: the real content cannot share its first token
# with both, so the shorter of the two shared prefixes ends exactly where the message starts.
_PLACEHOLDERS = ("\u2460", "~")


def is_mistral_common(tokenizer) -> bool:
    """True for transformers' wrapper of a mistral-common tokenizer (tokenizer_use_mistral_common)."""
    return type(tokenizer).__name__ == "MistralCommonBackend" or any(
        base.__name__ == "MistralCommonBackend" for base in type(tokenizer).__mro__
    )


class MistralChat(ChatTemplate):
    """Conversations through mistral-common's chat-completion encoder; assistant turns trained."""

    def setup_template(self, eot_tokens: list[str] | None) -> None:
        # No Jinja template and no end-of-turn strings: the encoder ends every assistant turn with eos.
        if eot_tokens:
            raise ValueError(
                "eot_tokens do not apply with tokenizer_use_mistral_common: mistral-common ends every "
                "assistant turn with </s>, which is what is trained"
            )
        if self.option("chat_template") or self.option("chat_template_jinja"):
            raise ValueError(
                "a chat template does not apply with tokenizer_use_mistral_common: mistral-common encodes "
                "the conversation itself"
            )
        self.eos_id = self.tokenizer.eos_token_id

    def content_of(self, number: int, message: Mapping[str, Any]) -> str | list[dict[str, str]]:
        content = message.get(self.content_field)
        if isinstance(content, str):
            return content
        if not isinstance(content, list) or not content:
            raise RowProblem(
                f"{self.messages_field}[{number}].{self.content_field} must be a string or a list of "
                '{"type": "text", "text": ...} / {"type": "thinking", "thinking": ...} chunks'
            )
        chunks = []
        for part in content:
            kind = part.get("type") if isinstance(part, Mapping) else None
            key = CHUNK_TYPES.get(kind) if isinstance(kind, str) else None
            if key is None or not isinstance(part.get(key), str):
                raise RowProblem(
                    f"{self.messages_field}[{number}] has a content chunk of type {kind!r}: only text and "
                    "thinking chunks are trained with tokenizer_use_mistral_common (images and audio need "
                    "a processor, which kubetune does not load)"
                )
            chunks.append({"type": kind, key: part[key]})
        return chunks

    def conversation(self, row: Mapping[str, Any]) -> tuple[list[dict[str, Any]], list[bool]]:
        """The messages as mistral-common reads them (OpenAI style), and whether each is trained."""
        raw = row.get(self.messages_field)
        if not isinstance(raw, list) or not raw:
            raise RowProblem(f"{self.messages_field!r} must be a non-empty list of messages")
        messages, trained = [], []
        for number, message in enumerate(raw):
            if not isinstance(message, Mapping) or not isinstance(message.get(self.role_field), str):
                raise RowProblem(
                    f"{self.messages_field}[{number}] needs a string field {self.role_field!r} "
                    "(map another with message_field_role)"
                )
            role = self.role_of.get(message[self.role_field], message[self.role_field])
            if self.drop_system and role == "system":
                continue
            content = self.content_of(number, message)
            thinking = message.get(self.thinking_field)
            if isinstance(thinking, str) and thinking:
                text = [{"type": "text", "text": content}] if isinstance(content, str) else content
                content = [{"type": "thinking", "thinking": thinking}, *text]
            flag = message.get(self.training_field)
            is_trained = flag if isinstance(flag, bool) else role in self.roles_to_train
            if is_trained and role != "assistant":
                raise RowProblem(
                    f"{self.messages_field}[{number}] is a trained {role} message: with "
                    "tokenizer_use_mistral_common only assistant messages are trained"
                )
            messages.append({"role": role, "content": content})
            trained.append(is_trained)
        if not messages:
            raise RowProblem("no messages are left once the system messages are dropped")
        return messages, trained

    def encode(self, messages: list[dict[str, Any]]) -> list[int]:
        try:
            return list(self.tokenizer.apply_chat_template(messages, tokenize=True, return_dict=False))
        except Exception as exc:  # mistral-common's validation errors are of several types
            raise RowProblem(f"mistral-common refused this conversation: {exc}") from exc

    def own_tokens(self, message: dict[str, Any]) -> list[int]:
        """The tokens mistral-common encodes this assistant message to, its closing </s> included."""
        real = self.encode([_PROBE_USER, message])
        if not hasattr(self, "_probes"):  # the same for every message: encoded once
            self._probes = [
                self.encode([_PROBE_USER, {"role": "assistant", "content": placeholder}])
                for placeholder in _PLACEHOLDERS
            ]
        shared = len(real)
        for probe in self._probes:
            common = next((i for i, (a, b) in enumerate(zip(real, probe, strict=False)) if a != b), None)
            shared = min(shared, common if common is not None else min(len(real), len(probe)))
        return real[shared:]

    def tokenize_row(self, row: Mapping[str, Any]) -> dict[str, list[int]]:
        messages, trained = self.conversation(row)
        input_ids = self.encode(messages)
        if self.train_on_inputs:
            return {"input_ids": input_ids, "labels": list(input_ids)}
        labels = [IGNORE_INDEX] * len(input_ids)
        ends = [i for i, token in enumerate(input_ids) if token == self.eos_id]
        turns = [k for k, m in enumerate(messages) if m["role"] == "assistant"]
        if len(ends) != len(turns):
            raise RowProblem(
                f"mistral-common encoded {len(turns)} assistant messages with {len(ends)} </s> tokens "
                "(consecutive assistant messages are merged into one): the turns cannot be located"
            )
        trained_turns = [k for k in turns if trained[k]]
        for k, end in zip(turns, ends, strict=True):
            own = self.own_tokens(messages[k])
            start = end + 1 - len(own)
            if start < 0 or input_ids[start : end + 1] != own:
                raise RowProblem(
                    f"{self.messages_field}: assistant message {k} encodes differently inside the "
                    "conversation than alone, so its trained span cannot be located exactly"
                )
            if trained[k]:
                labels[start:end] = input_ids[start:end]
            if self._train_eos(k, trained[k], trained_turns):
                labels[end] = input_ids[end]
        return {"input_ids": input_ids, "labels": labels}

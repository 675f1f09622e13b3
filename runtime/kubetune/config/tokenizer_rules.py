"""Cross-field rules of `tokenizer_use_mistral_common` (the data side: kubetune.data.formats.mistral_chat).

mistral-common's tokenizer encodes conversations with its own encoder and has a fixed vocabulary,
so every key that would pick a template, end turns differently or edit the vocabulary contradicts
it (Axolotl refuses the same keys with it). Only the config is read here: the operator never loads
mistral-common.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from .problems import ConfigProblem
from .rules import rule
from .schema import TrainConfig

_FIX = "remove {key}, or remove tokenizer_use_mistral_common"
# key -> why it contradicts the mistral-common tokenizer
_CONTRADICTIONS = {
    "chat_template": "mistral-common encodes conversations itself, with no Jinja template to choose",
    "chat_template_jinja": "mistral-common encodes conversations itself, with no Jinja template to choose",
    "special_tokens": "mistral-common's vocabulary and special tokens are fixed by its tokenizer file",
    "tokens": "mistral-common's vocabulary cannot be extended",
    "eot_tokens": "mistral-common ends every assistant turn with </s>, which is what is trained",
    "tokenizer_type": "the mistral-common tokenizer is transformers' MistralCommonBackend, not another class",
    "tokenizer_legacy": "mistral-common's tokenizers take no `legacy` switch",
    "rl": "preference pairs are rendered with a Jinja chat template, which a mistral-common tokenizer has not",
}


@rule
def mistral_common_tokenizer(cfg: TrainConfig, _: Path | None) -> Iterator[ConfigProblem]:
    if not cfg.tokenizer_use_mistral_common:
        return
    for key, why in _CONTRADICTIONS.items():
        value = getattr(cfg, key)
        if key == "special_tokens" and value is not None:
            value = {k: v for k, v in value.model_dump().items() if v is not None}
        if value not in (None, [], {}):
            yield ConfigProblem(
                key, f"{key} contradicts tokenizer_use_mistral_common: {why}", _FIX.format(key=key)
            )
    for list_key in ("datasets", "test_datasets"):
        for index, entry in enumerate(getattr(cfg, list_key) or []):
            path = f"{list_key}[{index}]"
            for key in ("chat_template", "chat_template_jinja"):
                if getattr(entry, key, None) is not None:
                    yield ConfigProblem(
                        f"{path}.{key}",
                        f"{key} contradicts tokenizer_use_mistral_common: {_CONTRADICTIONS[key]}",
                        _FIX.format(key=f"{path}.{key}"),
                    )
            for role_index, role in enumerate(entry.roles_to_train or []):
                if role != "assistant":
                    yield ConfigProblem(
                        f"{path}.roles_to_train[{role_index}]",
                        f"with tokenizer_use_mistral_common only assistant turns are trained, not {role} turns",
                        "train the assistant turns only (roles_to_train: [assistant]), or remove "
                        "tokenizer_use_mistral_common",
                    )

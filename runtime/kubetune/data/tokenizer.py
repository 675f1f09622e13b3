"""load_tokenizer(cfg): the one tokenizer both `kubetune preprocess` and training use.

The prepared-data cache is keyed by the tokenizer, so preprocess and train must build it the
same way: this function is that way.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from kubetune.config.sources import is_object_store_uri
from kubetune.data.errors import data_error
from kubetune.data.formats.chat_template import resolve_chat_template
from kubetune.data.formats.named_templates import NAMED_TEMPLATES

if TYPE_CHECKING:
    from kubetune.config import TrainConfig

SOURCE_KEYS = ("tokenizer_config", "base_model_config", "base_model")  # Axolotl's order


def tokenizer_source(cfg: TrainConfig) -> str:
    """The directory or hub id the tokenizer loads from, the way the engine finds the model
    (kubetune.train.model.model_source): a path relative to the config file's directory (or the
    working directory for a config built in memory) that is a directory there is that directory;
    anything else is passed on as written (a hub id, or an absolute path)."""
    key = next((k for k in SOURCE_KEYS if getattr(cfg, k)), None)
    if key is None:
        raise data_error(
            "base_model",
            "no tokenizer to load: base_model is not set",
            "set base_model (or tokenizer_config)",
        )
    value = str(getattr(cfg, key))
    if is_object_store_uri(value):  # the local copy (the fetch step made it, or this downloads it once)
        from kubetune import objectstore

        try:
            return str(objectstore.fetch_source(value))
        except objectstore.ObjectStoreError as err:
            raise data_error(key, err.message, err.fix) from None
    path = cfg.resolve_path(value)
    return str(path) if path.is_dir() else value


def load_tokenizer(cfg: TrainConfig) -> Any:
    """AutoTokenizer from tokenizer_config / base_model_config / base_model, with special_tokens,
    tokens and the selected chat template applied (so the saved tokenizer carries them).

    DataError (a ConfigError, exit 2) at `special_tokens.pad_token` when the tokenizer has no pad
    token and the config gives none."""
    import transformers

    source = tokenizer_source(cfg)
    revision = cfg.revision_for(source)  # revision_of_model
    if cfg.tokenizer_use_mistral_common:
        return load_mistral_common_tokenizer(source, revision)
    kwargs: dict[str, Any] = {"trust_remote_code": bool(cfg.trust_remote_code)} | revision
    if cfg.tokenizer_legacy is not None:
        # Llama-family sentencepiece-style tokenizers: `legacy` decides whether text after a special
        # token gets the word-start marker (true) or not (false, transformers' default).
        kwargs["legacy"] = cfg.tokenizer_legacy
    tokenizer_type = cfg.tokenizer_type
    if tokenizer_type:
        loader = getattr(transformers, tokenizer_type)
    else:
        loader = transformers.AutoTokenizer
        # With mistral-common installed, transformers' AutoTokenizer would pick it for Mistral models
        # on its own; here tokenizer_use_mistral_common alone decides (its default, false, keeps the
        # transformers tokenizer, with its Jinja template and editable vocabulary).
        kwargs["mistral_format"] = False
    tokenizer = loader.from_pretrained(source, **kwargs)
    # TrainConfig.special_tokens is a model whose unset tokens are None: pass only the ones given.
    special = {k: v for k, v in dict(cfg.special_tokens or {}).items() if v is not None}
    if special:
        tokenizer.add_special_tokens(special)
    tokens = list(cfg.tokens or [])
    if tokens:
        tokenizer.add_tokens(tokens)
    if tokenizer.pad_token is None:
        # Never silently pad with eos (the engine's check_pad_token refuses the same way): the
        # choice belongs in the config, where the prepared-data cache key sees it.
        suggestion = tokenizer.eos_token or "<pad>"
        raise data_error(
            "special_tokens.pad_token",
            f"the tokenizer of {source} has no pad token, which batching needs.",
            f'Add to the config:  special_tokens: {{pad_token: "{suggestion}"}}  (the eos token is the usual '
            "choice; padding never carries a label, so it is never trained on).",
        )
    choice = cfg.chat_template
    if (
        choice in NAMED_TEMPLATES
        or choice == "jinja"
        or (isinstance(choice, str) and choice.startswith("tokenizer_default_fallback_"))
    ):
        tokenizer.chat_template = resolve_chat_template(choice, tokenizer, cfg.chat_template_jinja)
    return tokenizer


def load_mistral_common_tokenizer(source: str, revision: dict):
    """tokenizer_use_mistral_common: Mistral's own tokenizer file (tekken.json, tokenizer.model.v*)
    through mistral-common, wrapped by transformers' MistralCommonBackend, in fine-tuning mode (every
    conversation ends with an assistant turn). Its chat-completion encoder formats conversations
    (formats/mistral_chat.py); it has no Jinja template, and its vocabulary cannot be extended."""
    try:
        from transformers.tokenization_mistral_common import MistralCommonBackend
        from transformers.utils.import_utils import is_mistral_common_available
    except ImportError as exc:  # an older transformers
        raise data_error(
            "tokenizer_use_mistral_common",
            f"this transformers has no mistral-common tokenizer wrapper ({exc})",
            "install kubetune's runtime dependencies (pip install -c constraints.txt 'kubetune[runtime]')",
        ) from exc
    if not is_mistral_common_available():
        raise data_error(
            "tokenizer_use_mistral_common",
            "the mistral-common package is not installed (or is older than transformers needs)",
            "install kubetune's runtime dependencies (pip install -c constraints.txt 'kubetune[runtime]')",
        )
    try:
        return MistralCommonBackend.from_pretrained(source, mode="finetuning", **revision)
    except (OSError, ValueError) as exc:
        raise data_error(
            "tokenizer_use_mistral_common",
            f"no mistral-common tokenizer loads from {source}: {exc}",
            "point base_model (or tokenizer_config) at a Mistral model with a tekken.json or "
            "tokenizer.model.v* file, or remove tokenizer_use_mistral_common",
        ) from exc

"""load_tokenizer(cfg): the one tokenizer both `kubetune preprocess` and training use.

The prepared-data cache is keyed by the tokenizer, so preprocess and train must build it the
same way: this function is that way.
"""

from __future__ import annotations

from kubetune.data.formats.chat_template import NAMED_TEMPLATES, resolve_chat_template
from kubetune.data.loading import option


def load_tokenizer(cfg):
    """AutoTokenizer from tokenizer_config / base_model_config / base_model, with special_tokens,
    tokens and the selected chat template applied (so the saved tokenizer carries them)."""
    import transformers

    source = option(cfg, "tokenizer_config") or option(cfg, "base_model_config") or option(cfg, "base_model")
    kwargs = {"trust_remote_code": bool(option(cfg, "trust_remote_code"))}
    tokenizer_type = option(cfg, "tokenizer_type")
    loader = getattr(transformers, tokenizer_type) if tokenizer_type else transformers.AutoTokenizer
    tokenizer = loader.from_pretrained(str(source), **kwargs)
    # TrainConfig.special_tokens is a model whose unset tokens are None: pass only the ones given.
    special = {k: v for k, v in dict(option(cfg, "special_tokens") or {}).items() if v is not None}
    if special:
        tokenizer.add_special_tokens(special)
    tokens = list(option(cfg, "tokens") or [])
    if tokens:
        tokenizer.add_tokens(tokens)
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token  # Llama 3 ships without one; padding is masked anyway
    choice = option(cfg, "chat_template")
    if (
        choice in NAMED_TEMPLATES
        or choice == "jinja"
        or (isinstance(choice, str) and choice.startswith("tokenizer_default_fallback_"))
    ):
        tokenizer.chat_template = resolve_chat_template(choice, tokenizer, option(cfg, "chat_template_jinja"))
    return tokenizer

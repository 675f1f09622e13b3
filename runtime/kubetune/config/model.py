"""Model and tokenizer keys."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import BeforeValidator, WithJsonSchema, field_validator
from pydantic_core import PydanticCustomError

from .base import IDENTIFIER, Section, field
from .sources import check_object_store_uri

# Named chat templates kubetune ships (kubetune.data.formats.named_templates renders them, a unit
# test keeps the two lists equal); `jinja` means chat_template_jinja.
SHIPPED_CHAT_TEMPLATES: tuple[str, ...] = (
    "chatml",
    "llama3",
    "llama4",
    "gemma",
    "gemma3",
    "gemma3n",
    "gemma4",
    "phi_3",
    "falcon_h1",
    "qwen_25",
    "qwen3",
    "qwen3_5",
    "cohere",
    "deepseek_v2",
    "jamba",
    "mistral_v1",
    "mistral_v2v3",
    "mistral_v3_tekken",
    "mistral_v7_tekken",
)
# Every value chat_template accepts: the shipped ones, the tokenizer's own, and the tokenizer's own
# with a shipped one as the fallback.
_CHAT_TEMPLATE_NAMES = (
    "tokenizer_default",
    *SHIPPED_CHAT_TEMPLATES,
    "jinja",
    *(f"tokenizer_default_fallback_{name}" for name in SHIPPED_CHAT_TEMPLATES),
)
if TYPE_CHECKING:  # a Literal built at run time is opaque to a type checker: a string to it
    ChatTemplateName = str
else:  # pydantic validates against (and the JSON schema lists) every name
    ChatTemplateName = Literal[_CHAT_TEMPLATE_NAMES]
CHAT_TEMPLATE_NAMES: tuple[str, ...] = _CHAT_TEMPLATE_NAMES

# Templates Axolotl ships that kubetune does not (yet): named so the error can say so.
AXOLOTL_ONLY_CHAT_TEMPLATES = frozenset(
    """alpaca llama3_2_vision
    phi_35 phi_4 deepseek_v3 nemotron_h exaone exaone4 metharme pixtral llava
    qwen2_vl gemma4_unified command_a command_a_tool_use command_a_rag aya""".split()
)


def check_chat_template_name(value: object) -> object:
    """Before-validator shared by the top-level and per-dataset `chat_template`."""
    if isinstance(value, str) and value not in CHAT_TEMPLATE_NAMES:
        name = value.removeprefix("tokenizer_default_fallback_")
        if name in AXOLOTL_ONLY_CHAT_TEMPLATES:
            raise PydanticCustomError(
                "chat_template_not_shipped",
                "'{value}' is an Axolotl chat template kubetune does not ship; kubetune ships "
                "tokenizer_default, {shipped} and jinja (with chat_template_jinja)",
                {
                    "value": value,
                    "shipped": ", ".join(SHIPPED_CHAT_TEMPLATES),
                    "fix": "use chat_template: tokenizer_default (the model's own template) or one kubetune "
                    "ships, or paste the template into chat_template_jinja",
                },
            )
    return value


def _one_or_more(value: object) -> object:
    # Axolotl's older configs give a single pattern as a string (`base_model_ignore_patterns: pytorch*`).
    return [value] if isinstance(value, str) else value


# A list of strings, or one string read as a list of it (the schema says so: a FineTuneJob may hold either).
Patterns = Annotated[
    list[str],
    BeforeValidator(_one_or_more),
    WithJsonSchema({"anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]}),
]


class SpecialTokens(Section):
    """Special tokens to set on the tokenizer (added to the vocabulary when missing)."""

    bos_token: str | None = field(None, description="Beginning-of-sequence token.")
    eos_token: str | None = field(
        None, description="End-of-sequence token (also ends every trained response)."
    )
    pad_token: str | None = field(
        None,
        description="Padding token. Needed for tokenizers without one (e.g. Llama 3: `<|end_of_text|>`).",
    )
    unk_token: str | None = field(None, description="Unknown-token placeholder.")
    additional_special_tokens: list[str] | None = field(
        None, description="Further special tokens (never split by the tokenizer)."
    )


class ModelKeys(Section):
    """Model and tokenizer"""

    base_model: str = field(
        description="Hub id, local directory or object-store prefix (s3://, gs://, az://; credentials from "
        "the environment) of the model to fine-tune (required). A local path is resolved relative to the "
        "config's directory; a prefix is downloaded once into the job's source cache.",
        min_length=1,
    )
    revision_of_model: str | None = field(
        None,
        description="Hub revision (branch, tag or commit) of `base_model`: passed as `revision` to every load "
        "of the base model, of its config and of its tokenizer when they come from `base_model`. Only for a "
        "hub id: with a local directory as `base_model` the run refuses it at start (a directory has no "
        "revisions).",
        min_length=1,
    )
    base_model_ignore_patterns: Patterns | None = field(
        None,
        description="Glob patterns (fnmatch, as huggingface_hub's `ignore_patterns`) of files of `base_model`'s "
        'hub repository not to download, e.g. `["*.pth", "original/*"]` (one pattern may be written as a string); a '
        "pattern ending in `/` means the folder. Applied by the fetch step (`kubetune fetch`, a job's fetch container), which otherwise "
        "downloads the whole repository (less foreign weight formats); a fetch whose patterns leave out "
        "`config.json` or every weight file stops with an error. Without a fetch step transformers downloads only "
        "the files it loads. Only for a hub id: a local directory or object-store prefix is refused.",
    )
    base_model_config: str | None = field(
        None,
        description="Hub id, directory or object-store prefix to read the model config from. Default: "
        "`base_model`.",
    )
    model_config_overrides: dict[str, Any] | None = field(
        None,
        description="Axolotl's `model_config` (write it so; pydantic reserves the name): attributes set on the "
        "model's transformers config before loading, e.g. `{output_router_logits: true}` (mixture-of-experts "
        "models such as Mixtral: the router's load-balancing loss, times the config's `router_aux_loss_coef`, "
        "is added to the training loss, as the model's own forward does).",
    )
    model_type: str | None = field(
        None,
        description="transformers class used to load the model, e.g. `AutoModelForCausalLM` or "
        "`LlamaForCausalLM`. Default: `AutoModelForCausalLM`.",
        pattern=IDENTIFIER,
    )
    tokenizer_type: str | None = field(
        None,
        description="transformers tokenizer class, e.g. `AutoTokenizer`. Default: `AutoTokenizer`.",
        pattern=IDENTIFIER,
    )
    tokenizer_config: str | None = field(
        None,
        description="Hub id, directory or object-store prefix to load the tokenizer from. Default: "
        "`base_model`.",
    )
    trust_remote_code: bool = field(
        False, description="Allow model and tokenizer code from the model repository to run."
    )
    special_tokens: SpecialTokens | None = field(
        None, description="Special tokens to set on the tokenizer (a mapping: bos_token, eos_token, ...)."
    )
    tokens: list[str] | None = field(
        None,
        description="Extra (non-special) tokens to add to the vocabulary. With an adapter, also list the "
        "embedding and output layers in `lora_modules_to_save` so the new rows are trained.",
    )
    chat_template: ChatTemplateName | None = field(
        None,
        description="Chat template for `chat_template` datasets: `tokenizer_default` (the tokenizer's own), "
        "one kubetune ships, written from each family's published turn format (`chatml`, `llama3`, `llama4`, "
        "`gemma`, `gemma3`, `gemma3n`, `gemma4`, `phi_3`, `falcon_h1`, `qwen_25`, `qwen3`, `qwen3_5`, `cohere`, "
        "`deepseek_v2`, `jamba`, `mistral_v1`, `mistral_v2v3`, `mistral_v3_tekken`, `mistral_v7_tekken`; "
        "text turns only, `qwen3`/`qwen3_5` with reasoning), `tokenizer_default_fallback_<name>` (the "
        "tokenizer's own, else the named one) or `jinja` (the template in `chat_template_jinja`). "
        "Default: `tokenizer_default`.",
    )
    chat_template_jinja: str | None = field(
        None,
        description="A custom Jinja chat template (implies `chat_template: jinja`).",
        min_length=1,
    )
    tokenizer_legacy: bool | None = field(
        None,
        description="Passed to the tokenizer as `legacy` (Llama-family tokenizers: true puts the word-start "
        "marker on text right after a special token, as older releases did). Default: the tokenizer's own.",
    )
    tokenizer_use_mistral_common: bool = field(
        False,
        description="Load the tokenizer with Mistral's mistral-common package (the model's `tekken.json` or "
        "`tokenizer.model.v*`) and encode `chat_template` conversations with its chat-completion encoder, "
        "the format Mistral's own models define, instead of a Jinja template; the assistant turns and their "
        "`</s>` are trained (`train_on_eos`). Contents are text, or text and thinking chunks (Magistral "
        "reasoning). Not with `chat_template`, `chat_template_jinja`, `special_tokens`, `tokens`, "
        "`eot_tokens` or `rl`, nor multimodal models (`processor_type`).",
    )
    reinit_weights: bool | None = field(
        None,
        description="Train from randomly initialised weights of `base_model`'s architecture (its config; "
        "the weights are not read), initialised from `seed` as transformers initialises a new model: "
        "pretraining from scratch. Default: load the pretrained weights.",
    )
    llama4_linearized_experts: bool = field(
        False,
        description="Build Llama 4's routed experts as one linear layer per expert and projection "
        "(`experts.gate_projs.N` / `up_projs.N` / `down_projs.N`), the layout of Axolotl's linearized Llama 4 "
        "checkpoints (e.g. `axolotl-quants/Llama-4-Scout-17B-16E-Linearized-bnb-nf4-bf16`), in place of "
        "transformers' two fused expert tensors: the checkpoint's per-expert weights load into them (4-bit "
        "with `load_in_4bit`) and LoRA can target them. Same computation. Llama 4 models only (any other stops "
        "at start); also applied when `kubetune merge` / `generate` load the base. Default: false.",
    )
    resize_token_embeddings_to_32x: bool = field(
        False,
        description="Grow the embedding matrix (and output head) to the tokenizer's length rounded up to a "
        "multiple of 32 when it is smaller than that (faster matrix shapes; as Axolotl); the extra rows are "
        "never produced by the tokenizer.",
    )
    eot_tokens: list[str] | None = field(
        None,
        description='The strings that end a turn in `chat_template` data (e.g. `["<end_of_turn>"]`): the '
        "token after a message's content counts as its end of turn (trained per `train_on_eos`) when it is "
        "one of these. Default: any special token of the tokenizer.",
    )

    @field_validator("base_model", "base_model_config", "tokenizer_config", mode="before")
    @classmethod
    def _known_scheme(cls, value: object, info) -> object:
        return check_object_store_uri(value, what=info.field_name, required=False)

    @field_validator("tokens", mode="before")
    @classmethod
    def _tokens_list(cls, value: object) -> object:
        # Axolotl's `tokens` is a list too (its schema: list[str]); some old example configs give it a mapping
        # of special tokens, which Axolotl refuses as well. Say where those belong.
        if isinstance(value, dict) and value and set(value) <= set(SpecialTokens.model_fields):
            raise PydanticCustomError(
                "tokens_mapping",
                "tokens is a list of extra tokens to add; this mapping sets special tokens ({names})",
                {
                    "names": ", ".join(value),
                    "fix": "move the mapping under `special_tokens:` (the same keys), and remove tokens",
                },
            )
        return value

    @field_validator("chat_template", mode="before")
    @classmethod
    def _known_template(cls, value: object) -> object:
        return check_chat_template_name(value)

    def revision_for(self, source: str) -> dict[str, str]:
        """`{"revision": revision_of_model}` for a from_pretrained of `source` when that is `base_model`'s
        hub id, else {}: the pin belongs to the base model's repository, not to another one that
        tokenizer_config or base_model_config names."""
        if self.revision_of_model and source == self.base_model:
            return {"revision": self.revision_of_model}
        return {}

"""Dataset entries (`datasets[]`, `test_datasets[]`)."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import field_validator
from pydantic_core import PydanticCustomError

from .base import Section
from .base import field as _field
from .model import ChatTemplateName, check_chat_template_name
from .sources import check_object_store_uri

BUILTIN_DATASET_TYPES: tuple[str, ...] = (
    "alpaca",
    "chat_template",
    "completion",
    "input_output",
    "pretokenized",
)
# Axolotl's single-turn instruction variants kubetune implements (kubetune.data.formats.alpaca_variants,
# a unit test keeps the two lists equal): `<name>` is the instruct style, `<name>:<style>` another.
_STYLES = ("instruct", "chat", "chatml", "phi")
INSTRUCTION_VARIANT_TYPES: tuple[str, ...] = (
    *(f"alpaca:{style}" for style in _STYLES),
    "alpaca_chat",
    "alpaca_chat.load",
    "alpaca_chat.load_concise",
    "alpaca_chat.load_no_prompt",
    "alpaca_chat.load_qa",
    "alpaca_chat.load_camel_ai",
    "jeopardy",
    *(f"jeopardy:{style}" for style in _STYLES),
    "explainchoice",
    *(f"explainchoice:{style}" for style in _STYLES),
    "concisechoice",
    "summarizetldr",
)
# The variants whose columns are alpaca's (renamed by field_instruction / field_input / field_output).
ALPACA_FIELD_TYPES = frozenset(
    name
    for name in INSTRUCTION_VARIANT_TYPES
    if name.startswith("alpaca") and not name.endswith(("_qa", "_camel_ai"))
)
# A user-defined format: `module.ClassName` (module importable from the config's directory).
CUSTOM_TYPE_PATTERN = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)+$")

# Axolotl's preference (rl:) dataset types kubetune implements (kubetune.data.formats.preference).
PAIR_DATASET_TYPES: tuple[str, ...] = ("chat_template.default", "chat_template.argilla", "chatml.intel")
# KTO's (rl: kto): one completion per row with a boolean `label`, in ChatML or Llama 3 turns
# (kubetune.data.formats.kto). chatml.intel names a pair type or a KTO type, as in Axolotl, by `rl`.
KTO_DATASET_TYPES: tuple[str, ...] = tuple(
    f"{template}.{layout}"
    for template in ("chatml", "llama3")
    for layout in ("argilla", "argilla_chat", "intel", "prompt_pairs", "ultra")
)
PREFERENCE_DATASET_TYPES: tuple[str, ...] = tuple(dict.fromkeys(PAIR_DATASET_TYPES + KTO_DATASET_TYPES))

# Axolotl prompt strategies kubetune does not implement, with what to write instead where one exists.
AXOLOTL_ONLY_DATASET_TYPES: dict[str, str] = {
    "sharegpt": "type: chat_template with field_messages: conversations, message_field_role: from, "
    "message_field_content: value",
    "alpaca_w_system": "type: alpaca",
    "alpaca_instruct": "type: alpaca",
    "oasst": "type: chat_template",
    "gpteacher": "type: alpaca",
    "pygmalion": "type: chat_template",
    "metharme": "type: completion or a custom format (module.ClassName)",
    "user_defined": "a custom format (module.ClassName)",
    "context_qa": "a custom format (module.ClassName)",
    "creative_acr": "a custom format (module.ClassName)",
    "reflection": "a custom format (module.ClassName)",
    "bradley_terry": "a custom format (module.ClassName)",
    "stepwise_supervised": "a custom format (module.ClassName)",
    "orpo": "a custom format (module.ClassName)",
    "dpo": "a custom format (module.ClassName)",
    "kto": "a custom format (module.ClassName)",
}

DatasetFileType = Literal["json", "jsonl", "parquet", "csv", "arrow", "text"]
TrainOnEos = Literal["all", "turn", "last", "none"]

# Role aliases applied when `roles` does not name a role (the common ShareGPT spellings included).
DEFAULT_ROLES: dict[str, list[str]] = {
    "system": ["system"],
    "user": ["user", "human"],
    "assistant": ["assistant", "gpt", "model"],
    "tool": ["tool"],
}

# Keys every dataset entry may set; the rest belong to one type (custom formats may read any of them).
COMMON_DATASET_KEYS = frozenset({"path", "type", "name", "split", "data_files", "ds_type", "revision"})
DATASET_KEYS_BY_TYPE: dict[str, frozenset[str]] = {
    "alpaca": frozenset({"field_instruction", "field_input", "field_output"}),
    "chat_template": frozenset(
        {
            "field_messages",
            "message_field_role",
            "message_field_content",
            "message_property_mappings",
            "message_field_training",
            "roles",
            "roles_to_train",
            "train_on_eos",
            "chat_template",
            "chat_template_jinja",
            "field_thinking",
            "template_thinking_key",
            "drop_system_message",
        }
    ),
    "chat_template.default": frozenset(
        {
            "field_messages",
            "message_field_role",
            "message_field_content",
            "message_property_mappings",
            "roles",
            "chat_template",
            "chat_template_jinja",
            "drop_system_message",
            "field_chosen",
            "field_rejected",
        }
    ),
    "chatml.intel": frozenset(),
    "completion": frozenset({"field"}),
    "input_output": frozenset(),
    "pretokenized": frozenset(),
    **{
        name: frozenset(
            {"field_instruction", "field_input", "field_output"} if name in ALPACA_FIELD_TYPES else ()
        )
        for name in INSTRUCTION_VARIANT_TYPES
    },
}


def check_dataset_type(value: object) -> object:
    if not isinstance(value, str):
        if isinstance(value, dict):
            raise PydanticCustomError(
                "dataset_type_mapping",
                "a mapping `type:` (Axolotl's user-defined prompt format) is not supported",
                {
                    "fix": "use type: alpaca with field_instruction/field_input/field_output, or a custom format "
                    "(type: module.ClassName)"
                },
            )
        return value
    if (
        value in BUILTIN_DATASET_TYPES
        or value in INSTRUCTION_VARIANT_TYPES
        or value in PREFERENCE_DATASET_TYPES
    ):
        return value
    head = value.split(".", 1)[0].split(":", 1)[0]
    if head in ("alpaca_chat", "jeopardy", "explainchoice") or (head == "alpaca" and ":" in value):
        raise PydanticCustomError(
            "dataset_type_variant_unknown",
            "'{value}' is not one of the variants kubetune implements",
            {
                "value": value,
                "fix": "use one of: " + ", ".join(n for n in INSTRUCTION_VARIANT_TYPES if n.startswith(head)),
            },
        )
    if head in AXOLOTL_ONLY_DATASET_TYPES or value in AXOLOTL_ONLY_DATASET_TYPES:
        hint = AXOLOTL_ONLY_DATASET_TYPES.get(value) or AXOLOTL_ONLY_DATASET_TYPES.get(head, "")
        raise PydanticCustomError(
            "dataset_type_axolotl_only",
            "'{value}' is an Axolotl prompt strategy kubetune does not implement",
            {"value": value, "fix": f"use {hint}"},
        )
    if head in BUILTIN_DATASET_TYPES:
        raise PydanticCustomError(
            "dataset_type_builtin_variant",
            "'{value}' names a variant of the built-in type '{head}'; kubetune's built-in types take no suffix",
            {"value": value, "head": head, "fix": f"write type: {head}"},
        )
    if not CUSTOM_TYPE_PATTERN.match(value):
        raise PydanticCustomError(
            "dataset_type_unknown",
            "unknown dataset type '{value}'",
            {
                "value": value,
                "fix": "use alpaca, chat_template, completion, input_output or pretokenized, or a custom format "
                "written module.ClassName (a module in the config's directory)",
            },
        )
    return value


class DatasetConfig(Section):
    """One entry of `datasets` (training data) or `test_datasets` (evaluation data)."""

    path: str = _field(
        description="Hub dataset id, a local file or directory (relative paths resolve against the "
        "config's directory), or an object-store URI (`s3://bucket/key`, `gs://`, `az://`; the `cloud` "
        "extra, credentials from the environment): a .json/.jsonl/.parquet/.csv file, a directory (prefix) "
        "of them, or a dataset saved with `save_to_disk`. An object-store source is downloaded once into "
        "the source cache (`KUBETUNE_SOURCE_CACHE`) and read from there.",
        min_length=1,
    )
    type: str | None = _field(
        None,
        description="Row format (unset: rows already tokenized, read as `pretokenized`, as Axolotl reads an "
        "empty type): `alpaca` (instruction/input/output), `chat_template` (a list of messages "
        "rendered with a chat template), `completion` (raw text, all tokens trained), `input_output` "
        "(`segments` of text, each with a `label` train flag), `pretokenized` (`input_ids` and optional "
        "`labels`), one of Axolotl's instruction variants (`alpaca:chat`, `alpaca:chatml`, `alpaca:phi`, "
        "`alpaca_chat[.load_qa|.load_concise|.load_camel_ai|.load_no_prompt]`, `jeopardy[:style]`, "
        "`explainchoice[:style]`, `concisechoice`, `summarizetldr`; prompts as Axolotl writes them, see "
        "docs/data.md), or a custom format `module.ClassName` (a subclass of kubetune's format base class, "
        "imported from the config's directory when the data is prepared).",
        min_length=1,
    )
    name: str | None = _field(None, description="Dataset configuration name (the hub dataset's subset).")
    split: str = _field("train", description="Split to read.")
    data_files: str | list[str] | None = _field(
        None, description="File(s) inside `path` to read (a glob or a list of names)."
    )
    ds_type: DatasetFileType | None = _field(
        None,
        description="File format of local data when the file extension does not say it: json, jsonl, "
        "parquet, csv, arrow or text.",
    )
    revision: str | None = _field(None, description="Hub revision (branch, tag or commit) of the dataset.")

    # alpaca
    field_instruction: str | None = _field(
        None, description="alpaca: column holding the instruction. Default: `instruction`."
    )
    field_input: str | None = _field(
        None, description="alpaca: column holding the optional input. Default: `input`."
    )
    field_output: str | None = _field(
        None, description="alpaca: column holding the response. Default: `output`."
    )

    # completion
    field: str | None = _field(None, description="completion: column holding the text. Default: `text`.")

    # preference pairs (rl:)
    field_chosen: str | None = _field(
        None,
        description="chat_template.default (rl:): column holding the preferred answer, an assistant message "
        "or a string. Default: `chosen`.",
    )
    field_rejected: str | None = _field(
        None,
        description="chat_template.default (rl:): column holding the dispreferred answer, an assistant "
        "message or a string. Default: `rejected`.",
    )

    # chat_template
    field_messages: str | None = _field(
        None, description="chat_template: column holding the list of messages. Default: `messages`."
    )
    message_field_role: str | None = _field(
        None,
        description="chat_template: key of a message's role (`from` for ShareGPT data). Default: `role`.",
    )
    message_field_content: str | None = _field(
        None,
        description="chat_template: key of a message's text (`value` for ShareGPT data). Default: `content`.",
    )
    message_property_mappings: dict[str, str] | None = _field(
        None,
        description="chat_template: Axolotl's newer spelling of the two keys above, e.g. "
        "`{role: from, content: value}` (only `role` and `content` are accepted).",
    )
    message_field_training: str | None = _field(
        None,
        description="chat_template: key of an optional per-message true/false that overrides "
        "`roles_to_train` for that message. Default: `training`.",
    )
    roles: dict[str, list[str]] | None = _field(
        None,
        description="chat_template: role name -> the values of the role field that mean it, e.g. "
        "`{user: [human], assistant: [gpt]}`. Entries replace the defaults for the roles they name; "
        "defaults: system: [system], user: [user, human], assistant: [assistant, gpt, model], tool: [tool].",
    )
    roles_to_train: list[str] | None = _field(
        None,
        description="chat_template: roles whose messages are trained (carry labels). Default: `[assistant]`.",
    )
    train_on_eos: TrainOnEos | None = _field(
        None,
        description="chat_template: which end-of-turn tokens are trained: `turn` (after each trained "
        "message), `all` (after every message), `last` (only the final one) or `none`. Default: `turn`.",
    )
    chat_template: ChatTemplateName | None = _field(
        None, description="chat_template: template for this dataset. Default: the top-level `chat_template`."
    )
    chat_template_jinja: str | None = _field(
        None, description="chat_template: a custom Jinja template for this dataset.", min_length=1
    )

    field_thinking: str | None = _field(
        None,
        description="chat_template: key of a message's reasoning trace; it reaches the template under "
        "`template_thinking_key` and is trained with its message where the template renders it "
        "(e.g. `qwen3`: assistant turns after the last user message). Default: `reasoning_content`.",
    )
    template_thinking_key: str | None = _field(
        None,
        description="chat_template: the message key the template reads the reasoning trace from "
        "(`reasoning_content` for qwen3, `thinking` for gpt-oss). Default: `reasoning_content`.",
    )
    drop_system_message: bool | None = _field(
        None, description="chat_template: remove system messages before rendering. Default: false."
    )

    @field_validator("path", mode="before")
    @classmethod
    def _known_scheme(cls, value: object) -> object:
        return check_object_store_uri(value, what="path", required=False)

    @field_validator("type", mode="before")
    @classmethod
    def _type_shape(cls, value: object) -> object:
        return check_dataset_type(value)

    @field_validator("chat_template", mode="before")
    @classmethod
    def _known_template(cls, value: object) -> object:
        return check_chat_template_name(value)

    @field_validator("message_property_mappings")
    @classmethod
    def _role_and_content_only(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        extra = sorted(set(value or {}) - {"role", "content"})
        if extra:
            raise PydanticCustomError(
                "message_property_mappings_keys",
                "message_property_mappings maps only role and content, not {extra}",
                {"extra": ", ".join(extra), "fix": "keep only the role and content entries"},
            )
        return value

    @property
    def is_custom_type(self) -> bool:
        """True when `type` names a user-defined format (`module.ClassName`)."""
        return self.type is not None and self.type not in (
            *BUILTIN_DATASET_TYPES,
            *INSTRUCTION_VARIANT_TYPES,
            *PREFERENCE_DATASET_TYPES,
        )

    def custom_type_parts(self) -> tuple[str, str]:
        """(`module`, `ClassName`) of a custom format; the module resolves against cfg.source_dir."""
        if self.type is None or not self.is_custom_type:
            raise ValueError(f"dataset type {self.type!r} is built in, not a custom format")
        module, _, attr = self.type.rpartition(".")
        return module, attr

    def effective_roles(self) -> dict[str, list[str]]:
        """Role name -> accepted values of the role field: DEFAULT_ROLES overlaid with `roles`."""
        merged = {role: list(aliases) for role, aliases in DEFAULT_ROLES.items()}
        merged.update({role: list(aliases) for role, aliases in (self.roles or {}).items()})
        return merged

    def effective_roles_to_train(self) -> list[str]:
        return list(self.roles_to_train) if self.roles_to_train is not None else ["assistant"]

"""Dataset formats: the built-in `type:` values and user formats named `module.Class`."""

from __future__ import annotations

import difflib
import importlib
import importlib.util
import sys
from pathlib import Path

from kubetune.data.errors import data_error
from kubetune.data.formats.alpaca_variants import variant_formats
from kubetune.data.formats.base import IGNORE_INDEX, PromptFormat, RowProblem, Segment, TokenizedExamples
from kubetune.data.formats.chat_template import ChatTemplate, resolve_chat_template
from kubetune.data.formats.instruct import Alpaca, Completion, InputOutput, Pretokenized

BUILTIN_FORMATS: dict[str, type[PromptFormat]] = {
    "alpaca": Alpaca,
    "chat_template": ChatTemplate,
    "completion": Completion,
    "input_output": InputOutput,
    "pretokenized": Pretokenized,
    # Axolotl's instruction variants (alpaca:chat, jeopardy, ...): formats/alpaca_variants.py
    **variant_formats(),
}

__all__ = [
    "BUILTIN_FORMATS",
    "IGNORE_INDEX",
    "PromptFormat",
    "RowProblem",
    "Segment",
    "TokenizedExamples",
    "resolve_chat_template",
    "resolve_format",
]


def resolve_format(
    type_name: str, *, path: str, source_dir: str | Path | None = None, rl: str | None = None
) -> type[PromptFormat]:
    """The PromptFormat class for a `type:` value; DataError naming `path` when there is none.

    With `rl: kto` the preference names are KTO's (chatml.intel is a pair type otherwise)."""
    if type_name in BUILTIN_FORMATS:
        return BUILTIN_FORMATS[type_name]
    from kubetune.data.formats.kto import KTO_FORMATS
    from kubetune.data.formats.preference import PREFERENCE_FORMATS

    if rl == "kto" and type_name in KTO_FORMATS:
        return KTO_FORMATS[type_name]
    if type_name in PREFERENCE_FORMATS:  # rl: datasets (Axolotl's names contain a dot)
        return PREFERENCE_FORMATS[type_name]
    if type_name in KTO_FORMATS:
        return KTO_FORMATS[type_name]
    if "." not in type_name:
        close = difflib.get_close_matches(type_name, BUILTIN_FORMATS, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise data_error(
            path,
            f"unknown dataset type {type_name!r}",
            f"{hint}use one of {', '.join(BUILTIN_FORMATS)}, or `my_module.MyFormat` for a "
            "PromptFormat subclass in my_module.py next to the config",
        )
    module_name, _, class_name = type_name.rpartition(".")
    module = _import_user_module(module_name, source_dir, path)
    cls = getattr(module, class_name, None)
    if cls is None:
        found = [
            name for name, value in vars(module).items() if _is_format(value) and value is not PromptFormat
        ]
        raise data_error(
            path,
            f"module {module_name!r} ({getattr(module, '__file__', '?')}) has no class {class_name!r}",
            f"name one of its PromptFormat subclasses: {', '.join(found) or '(none defined)'}",
        )
    if not _is_format(cls):
        raise data_error(
            path,
            f"{type_name} is not a subclass of kubetune.data.formats.PromptFormat",
            "subclass PromptFormat and implement segments(row) or tokenize_row(row) (see docs/data.md)",
        )
    return cls


def _is_format(value) -> bool:
    return isinstance(value, type) and issubclass(value, PromptFormat)


def _import_user_module(module_name: str, source_dir, path: str):
    """Import `module_name` from the config's directory first, then from installed packages."""
    if source_dir is not None:
        base = Path(source_dir).joinpath(*module_name.split("."))
        for candidate in (base.with_suffix(".py"), base / "__init__.py"):
            if candidate.is_file():
                # Loaded from its file every time: two configs may have different my_formats.py.
                spec = importlib.util.spec_from_file_location(module_name, candidate)
                assert spec is not None and spec.loader is not None  # a .py file always has both
                module = importlib.util.module_from_spec(spec)
                sys.modules[module_name] = module
                spec.loader.exec_module(module)
                return module
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        where = f"{source_dir} (the config's directory) nor " if source_dir else ""
        raise data_error(
            path,
            f"cannot import module {module_name!r}: found in neither {where}installed packages ({exc})",
            f"put {module_name.replace('.', '/')}.py next to the config, or install the package that provides it",
        ) from exc

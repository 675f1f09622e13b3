"""`TrainConfig`: the whole training config, composed of the key sections."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from pydantic import PrivateAttr

from .adapter import AdapterKeys
from .data import DataKeys
from .hardware import LoaderKeys, PrecisionKeys
from .kernels import KernelKeys
from .model import ModelKeys
from .outputs import OutputKeys
from .parallel import ParallelKeys
from .preference import PreferenceKeys
from .training import TrainingKeys

# In documentation order; TrainConfig's fields are the union of these sections' fields.
SECTIONS: tuple[type, ...] = (
    ModelKeys,
    DataKeys,
    AdapterKeys,
    TrainingKeys,
    PreferenceKeys,
    PrecisionKeys,
    KernelKeys,
    ParallelKeys,
    LoaderKeys,
    OutputKeys,
)


class TrainConfig(
    OutputKeys,
    LoaderKeys,
    ParallelKeys,
    KernelKeys,
    PrecisionKeys,
    PreferenceKeys,
    TrainingKeys,
    AdapterKeys,
    DataKeys,
    ModelKeys,
):
    """A kubetune training config: Axolotl key names, validated, immutable."""

    _source_dir: Path | None = PrivateAttr(default=None)

    @property
    def source_dir(self) -> Path | None:
        """Directory of the YAML file the config came from (None for a config built from a mapping)."""
        return self._source_dir

    def resolve_path(self, value: str | Path) -> Path:
        """A path from the config, made absolute: relative paths resolve against `source_dir` (else the cwd)."""
        path = Path(value).expanduser()
        if path.is_absolute():
            return path
        return (self._source_dir or Path.cwd()) / path

    def to_mapping(self) -> dict[str, Any]:
        """The canonical, YAML-serialisable mapping of the keys that were set (round-trips through load_config)."""
        return self.model_dump(mode="json", exclude_unset=True)

    def config_hash(self) -> str:
        """sha256 of the canonical JSON of the set keys (stable across key order and spelling of numbers)."""
        canonical = json.dumps(self.to_mapping(), sort_keys=True, separators=(",", ":"), ensure_ascii=True)
        return hashlib.sha256(canonical.encode("utf-8")).hexdigest()

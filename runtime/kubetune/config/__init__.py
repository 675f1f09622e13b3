"""kubetune.config: the Axolotl-compatible training config (pydantic and yaml only; never torch).

from kubetune.config import load_config, validate_mapping, ConfigError
cfg = load_config("finetune.yml")                 # raises ConfigError with every problem at once
problems = validate_mapping({"base_model": ...})  # never raises
"""

from __future__ import annotations

from .datasets import BUILTIN_DATASET_TYPES, DatasetConfig
from .jsonschema import training_config_json_schema
from .loading import load_config
from .parallel import FsdpConfig
from .problems import ConfigError, ConfigProblem, format_report
from .schema import TrainConfig
from .validation import validate_mapping

__all__ = [
    "BUILTIN_DATASET_TYPES",
    "ConfigError",
    "ConfigProblem",
    "DatasetConfig",
    "FsdpConfig",
    "TrainConfig",
    "format_report",
    "load_config",
    "training_config_json_schema",
    "validate_mapping",
]

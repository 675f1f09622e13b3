"""Data problems are config problems: each names the key path (`datasets[0].path`) and the fix.

DataError subclasses ConfigError, so a caller that reports config errors (exit status 2)
reports unusable data the same way.
"""

from __future__ import annotations

from kubetune.config import ConfigError, ConfigProblem


class DataError(ConfigError):
    """Raised when the configured datasets cannot be prepared; `problems` says where and what to do."""


def data_error(path: str, message: str, fix: str) -> DataError:
    return DataError([ConfigProblem(path, message, fix)])

"""Data problems are config problems: each names the key path (`datasets[0].path`) and the fix.

DataError subclasses ConfigError, so a caller that reports config errors (exit status 2)
reports unusable data the same way.
"""

from __future__ import annotations

from kubetune.config import ConfigError, ConfigProblem

DataProblem = ConfigProblem


class DataError(ConfigError):
    """Raised when the configured datasets cannot be prepared; `problems` says where and what to do."""

    def report(self) -> str:
        """The one-screen report: every problem with its key path and fix."""
        return str(self)


def data_error(path: str, message: str, fix: str) -> DataError:
    return DataError([DataProblem(path, message, fix)])

"""Data problems reported the way config problems are: a list of (key path, message, fix)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DataProblem:
    path: str  # config key path, e.g. "datasets[0].path"
    message: str
    fix: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}\n    fix: {self.fix}"


class DataError(ValueError):
    """Raised when the datasets cannot be prepared; `problems` says where and what to do."""

    def __init__(self, problems: list[DataProblem] | DataProblem):
        self.problems = [problems] if isinstance(problems, DataProblem) else list(problems)
        super().__init__(self.report())

    def report(self) -> str:
        lines = [f"{len(self.problems)} data problem(s):"]
        lines += [f"  {problem}" for problem in self.problems]
        return "\n".join(lines)


def data_error(path: str, message: str, fix: str) -> DataError:
    return DataError(DataProblem(path, message, fix))

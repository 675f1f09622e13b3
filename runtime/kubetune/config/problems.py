"""The error report: one `ConfigProblem` per fault, all of them at once in a `ConfigError`."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class ConfigProblem:
    """One fault in a config.

    path:    where it is, in the config's own key names: ``"datasets[0].type"``,
             ``"fsdp_config.fsdp_version"``; ``""`` for the document as a whole.
    message: what is wrong, naming the value found where that helps.
    fix:     what to write instead.
    """

    path: str
    message: str
    fix: str = ""

    def to_dict(self) -> dict[str, str]:
        return asdict(self)

    def __str__(self) -> str:
        where = self.path or "(top level)"
        text = f"{where}: {self.message}"
        if self.fix:
            text += f"\n    fix: {self.fix}"
        return text


def format_report(problems: Iterable[ConfigProblem], *, source: str | None = None) -> str:
    """The one-screen report: a header line, then each problem with its key path and fix."""
    problems = list(problems)
    noun = "problem" if len(problems) == 1 else "problems"
    header = f"{source}: {len(problems)} config {noun}" if source else f"{len(problems)} config {noun}"
    lines = [header]
    for problem in problems:
        lines.extend("  " + line for line in str(problem).splitlines())
    return "\n".join(lines)


class ConfigError(ValueError):
    """Raised by `load_config` with every problem found (never just the first)."""

    def __init__(self, problems: Iterable[ConfigProblem], *, source: str | None = None):
        self.problems: list[ConfigProblem] = list(problems)
        self.source = source
        super().__init__(format_report(self.problems, source=source))

"""Errors the user fixes, and the process exit codes (docs/internals.md "kubetune.train").

Bad input is a `ConfigError` (kubetune.config.problems), whoever finds it: the config's validation,
the data pipeline (`DataError`: a column missing, every example too long) or the run's own checks
(`UserError`: a missing model directory, a tokenizer without a pad token, a GPU-only feature asked
for on a machine without CUDA). The run stops before anything in output_dir is touched, prints one
screen that says what is wrong and what to write instead (`bad_input_report`), and exits 2.
Everything else that goes wrong while training is a training failure (exit 1).
"""

from __future__ import annotations

import textwrap

from kubetune.config import ConfigError, ConfigProblem

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_BAD_INPUT = 2
EXIT_PREEMPTED = 143  # 128 + SIGTERM: the checkpoint is written, the pod may be rescheduled


class UserError(ConfigError):
    """Bad input the run found itself: one ConfigProblem at `key` (the document as a whole without one).

    `problem`, `fix` and `key` are that problem's message, fix and path.
    """

    exit_code = EXIT_BAD_INPUT

    def __init__(self, problem: str, fix: str, *, key: str | None = None):
        super().__init__([ConfigProblem(key or "", problem, fix)])

    @property
    def problem(self) -> str:
        return self.problems[0].message

    @property
    def fix(self) -> str:
        return self.problems[0].fix

    @property
    def key(self) -> str | None:
        return self.problems[0].path or None

    def report(self, action: str = "train") -> str:
        """The one-screen message printed to stderr."""
        return bad_input_report(self, action)

    def __str__(self) -> str:
        return self.report()


def bad_input_report(error: ConfigError, action: str = "train") -> str:
    """The one screen printed to stderr when `action` is refused: each problem, its key path and fix."""
    problems = error.problems
    keys = ", ".join(dict.fromkeys(problem.path for problem in problems if problem.path))
    lines = [f"kubetune: cannot {action}" + (f" ({keys})" if keys else "") + ":"]
    if len(problems) == 1:  # its key is in the first line already
        lines += _wrap(problems[0].message, "  ", "  ")
        lines += _wrap(problems[0].fix, "  fix: ", "       ")
    else:
        for problem in problems:
            lines += _wrap(f"{problem.path or '(top level)'}: {problem.message}", "  ", "    ")
            lines += _wrap(problem.fix, "    fix: ", "         ")
    lines.append("  Nothing in output_dir was changed.")
    return "\n".join(lines)


def bad_input_reason(error: ConfigError) -> str:
    """The reason in the termination message (the job's status.message): a UserError's own words, the
    whole report of the problems otherwise (their key paths and fixes)."""
    return error.problem if isinstance(error, UserError) else str(error)


def _wrap(text: str, first: str, rest: str) -> list[str]:
    return textwrap.wrap(text, width=100, initial_indent=first, subsequent_indent=rest)


class Preempted(Exception):
    """Raised by the loop after the SIGTERM checkpoint is written: the run stops with exit 143."""

    exit_code = EXIT_PREEMPTED

    def __init__(self, step: int, checkpoint: str | None):
        super().__init__(f"stopped by SIGTERM at step {step}; checkpoint: {checkpoint or 'none needed'}")
        self.step = step
        self.checkpoint = checkpoint

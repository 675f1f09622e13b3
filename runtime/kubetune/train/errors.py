"""Errors the user fixes, and the process exit codes (docs/internals.md "kubetune.train").

A `UserError` is bad input: a missing model directory, a tokenizer without a pad token, a GPU-only
feature asked for on a machine without CUDA. The run stops before anything in output_dir is touched,
prints one screen that says what is wrong and what to write instead, and exits 2. Everything else that
goes wrong while training is a training failure (exit 1).
"""

from __future__ import annotations

import textwrap

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_BAD_INPUT = 2
EXIT_PREEMPTED = 143  # 128 + SIGTERM: the checkpoint is written, the pod may be rescheduled


class UserError(Exception):
    """Bad input: `problem` says what is wrong, `fix` what to do about it; `key` names the config key."""

    exit_code = EXIT_BAD_INPUT

    def __init__(self, problem: str, fix: str, *, key: str | None = None):
        super().__init__(problem)
        self.problem = problem
        self.fix = fix
        self.key = key

    def report(self, action: str = "train") -> str:
        """The one-screen message printed to stderr."""
        where = f" ({self.key})" if self.key else ""
        lines = [f"kubetune: cannot {action}{where}:"]
        lines += textwrap.wrap(self.problem, width=100, initial_indent="  ", subsequent_indent="  ")
        lines += textwrap.wrap(self.fix, width=100, initial_indent="  fix: ", subsequent_indent="       ")
        lines.append("  Nothing in output_dir was changed.")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.report()


class Preempted(Exception):
    """Raised by the loop after the SIGTERM checkpoint is written: the run stops with exit 143."""

    exit_code = EXIT_PREEMPTED

    def __init__(self, step: int, checkpoint: str | None):
        super().__init__(f"stopped by SIGTERM at step {step}; checkpoint: {checkpoint or 'none needed'}")
        self.step = step
        self.checkpoint = checkpoint

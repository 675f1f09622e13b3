"""What a person or a log collector sees of a run: `--log-format json | plain | auto`.

    fmt = setup_console(args.log_format)     # once per process: logging + the chosen format
    reporter = progress_reporter(fmt)        # train: the stdout reporter of kubetune.train.progress
    with phase(fmt, "preparing datasets"):   # a spinner on a terminal, a log line otherwise
        ...

* `json`: one JSON line per logging step on stdout (pods, log collectors; the operator's docs show them);
  library log lines on stderr as they are.
* `plain`: one readable line per logging step on stdout (a CI log, `| tee`), no cursor movement.
* `display`: a live display on stderr (rich): step/total and a bar, loss, learning rate, tokens/s,
  ETA and the last checkpoint; log lines print above it, accelerate's per-file checkpoint INFO lines
  are left out (the display names the checkpoint). Chosen by `auto` when stdout is a terminal.

Under torchrun every worker parses the same flag; KUBETUNE_LOG_FORMAT sets it where no flag is
passed (a pod's environment), and carries the choice from the command line to the reporters.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
from collections.abc import Iterator
from typing import IO, Any, Protocol

LOG_FORMATS = ("auto", "json", "plain")
ENVIRONMENT = "KUBETUNE_LOG_FORMAT"
# Per-file lines of accelerate's save_state; the display prints one line per checkpoint instead.
CHATTY_ON_A_TERMINAL = ("accelerate.checkpointing", "accelerate.accelerator")
QUIET_LIBRARIES = ("httpx", "urllib3", "datasets", "filelock")


class ProgressLike(Protocol):
    """What a reporter reads (kubetune.train.progress.Progress; kept as a protocol: no torch import here)."""

    step: int
    total_steps: int
    epoch: float
    loss: float | None
    learning_rate: float | None
    tokens_per_second: float | None
    eta_seconds: float | None
    last_checkpoint: str | None
    output_dir: str | None
    event: str
    eval_loss: float | None
    eval_perplexity: float | None

    def log_line(self) -> dict: ...


def add_log_format_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--log-format",
        choices=LOG_FORMATS,
        default=None,
        help="json: a JSON line per logging step (pods, log collectors); plain: a readable line per step; "
        f"auto (default): a live display on a terminal, json otherwise. Environment: {ENVIRONMENT}",
    )


def resolve_log_format(requested: str | None, stream: IO[str] | None = None) -> str:
    """ "json", "plain" or "display": the flag, else KUBETUNE_LOG_FORMAT, else auto (display on a TTY)."""
    value = requested or os.environ.get(ENVIRONMENT) or "auto"
    if value not in (*LOG_FORMATS, "display"):
        raise ValueError(f"{ENVIRONMENT}={value!r}: expected one of {', '.join(LOG_FORMATS)}")
    if value != "auto":
        return value
    stream = stream or sys.stdout
    return "display" if stream.isatty() else "json"


def setup_console(requested: str | None, *, export: bool = False, rank: int | None = None) -> str:
    """Logging for this process in the chosen format; returns the format.

    With `export`, the format is set as KUBETUNE_LOG_FORMAT: the training progress reporters (built
    later, far from the command line) read it there, and so do child processes.
    """
    rank = int(os.environ.get("RANK", 0)) if rank is None else rank
    fmt = resolve_log_format(requested)
    if export:
        os.environ[ENVIRONMENT] = fmt
    level = logging.INFO if rank == 0 else logging.WARNING
    prefix = f"[rank {rank}] " if int(os.environ.get("WORLD_SIZE", 1)) > 1 else ""
    root = logging.getLogger()
    for existing in list(root.handlers):  # a second call replaces ours; handlers of others stay (pytest's)
        if getattr(existing, "kubetune_console", False):
            root.removeHandler(existing)
    if fmt == "display":
        from rich.logging import RichHandler

        handler: logging.Handler = RichHandler(console=console(), show_path=False, rich_tracebacks=False)
        handler.setFormatter(logging.Formatter(f"{prefix}%(name)s: %(message)s"))
        for name in CHATTY_ON_A_TERMINAL:
            logging.getLogger(name).setLevel(logging.WARNING)
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(f"%(asctime)s %(levelname)s {prefix}%(name)s: %(message)s"))
    handler.kubetune_console = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(level)
    for name in QUIET_LIBRARIES:
        logging.getLogger(name).setLevel(logging.WARNING)
    return fmt


_CONSOLE = None


def console():
    """The one rich Console of the process (stderr), shared by the live display and the log handler."""
    global _CONSOLE
    if _CONSOLE is None:
        from rich.console import Console

        _CONSOLE = Console(file=sys.stderr)
    return _CONSOLE


@contextlib.contextmanager
def phase(fmt: str, what: str) -> Iterator[None]:
    """A spinner with elapsed time while `what` runs (display), else one log line when it starts."""
    if fmt != "display":
        logging.getLogger("kubetune").info("%s ...", what)
        yield
        return
    with console().status(f"[bold]{what}[/] ...", spinner="dots"):
        yield


# -- the three stdout reporters of training progress ---------------------------------------------


class JsonLines:
    """One JSON line per report on stdout (the pods' format: log collectors parse it)."""

    def __init__(self, stream: IO[str] | None = None):
        self.stream = stream or sys.stdout

    def report(self, progress: ProgressLike) -> None:
        print(json.dumps(progress.log_line()), file=self.stream, flush=True)

    def close(self) -> None:
        pass


class PlainLines:
    """One readable line per report, no cursor movement (CI logs, `| tee`)."""

    def __init__(self, stream: IO[str] | None = None):
        self.stream = stream or sys.stdout

    def report(self, progress: ProgressLike) -> None:
        print(describe(progress), file=self.stream, flush=True)

    def close(self) -> None:
        pass


class LiveDisplay:
    """A live progress display (rich): bar, step/total, loss, lr, tok/s, ETA, last checkpoint."""

    def __init__(self, target=None):
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

        self.console = target or console()
        self.bar = Progress(
            TextColumn("[bold]train[/]"),
            BarColumn(),
            TextColumn("{task.completed}/{task.total} steps"),
            TextColumn("{task.fields[metrics]}"),
            TimeElapsedColumn(),
            TextColumn("ETA {task.fields[eta]}"),
            console=self.console,
            transient=False,
        )
        self.task = None
        self.checkpoint = "-"

    def report(self, progress: ProgressLike) -> None:
        if progress.last_checkpoint:
            self.checkpoint = os.path.basename(progress.last_checkpoint.rstrip("/"))
        fields: dict[str, Any] = {
            "metrics": _metrics(progress, self.checkpoint),
            "eta": _clock(progress.eta_seconds),
        }
        if self.task is None:
            self.bar.start()
            self.task = self.bar.add_task(
                "train", total=progress.total_steps, completed=progress.step, **fields
            )
        self.bar.update(self.task, total=progress.total_steps, completed=progress.step, **fields)
        if progress.event != "train":  # eval, checkpoint, done, preempted: a line that stays above the bar
            self.bar.console.print(describe(progress))

    def close(self) -> None:
        if self.task is not None:
            self.bar.stop()


def progress_reporter(fmt: str, stream: IO[str] | None = None):
    """The stdout reporter for a format from resolve_log_format."""
    if fmt == "display":
        return LiveDisplay()
    if fmt == "plain":
        return PlainLines(stream)
    return JsonLines(stream)


def describe(progress: ProgressLike) -> str:
    """A one-line human description of a report (plain lines, and the display's event lines)."""
    head = f"step {progress.step}/{progress.total_steps}"
    if progress.total_steps > 0:
        head += f" ({100 * progress.step // progress.total_steps}%)"
    if progress.event == "eval":
        parts = [f"eval at {head}: eval_loss {_num(progress.eval_loss)}"]
        if progress.eval_perplexity is not None:
            parts.append(f"perplexity {_num(progress.eval_perplexity)}")
        return ", ".join(parts)
    if progress.event == "checkpoint":
        return f"checkpoint at {head}: {progress.last_checkpoint}"
    if progress.event == "done":
        where = f"; outputs in {progress.output_dir}" if progress.output_dir else ""
        return f"done at {head}: loss {_num(progress.loss)}{where}"
    if progress.event == "preempted":
        return f"stopped by SIGTERM at {head}; checkpoint {progress.last_checkpoint or 'none'}"
    parts = [head, _metrics(progress, None), f"eta {_clock(progress.eta_seconds)}"]
    return "  ".join(part for part in parts if part)


def _metrics(progress: ProgressLike, checkpoint: str | None) -> str:
    parts = []
    if progress.loss is not None:
        parts.append(f"loss {_num(progress.loss)}")
    if progress.learning_rate is not None:
        parts.append(f"lr {progress.learning_rate:.3g}")
    if progress.tokens_per_second is not None:
        parts.append(f"{progress.tokens_per_second:,.0f} tok/s")
    if checkpoint is not None:
        parts.append(f"ckpt {checkpoint}")
    return "  ".join(parts)


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def _clock(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}"

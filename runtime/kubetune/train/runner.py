"""Exit codes and the termination message around a run (docs/internals.md "kubetune.train").

0 done (or already done), 2 bad input, 1 training failure, 143 stopped by SIGTERM after its checkpoint.
"""

from __future__ import annotations

import logging
import os
import sys
import traceback

from kubetune.config import ConfigError
from kubetune.train.errors import (
    EXIT_BAD_INPUT,
    EXIT_FAILURE,
    EXIT_OK,
    EXIT_PREEMPTED,
    Preempted,
    bad_input_reason,
    bad_input_report,
)
from kubetune.train.outputs import write_termination_log

log = logging.getLogger("kubetune.train")


def is_main_process() -> bool:
    return int(os.environ.get("RANK", 0)) == 0


def is_first_in_pod() -> bool:
    """Each pod (torchrun node) has its own termination message, which its first process writes.

    A failure is written by every pod, not only by global rank 0: the operator reports whichever
    worker it sees fail first, and that pod's message must say why (not torchrun's log tail).
    """
    return int(os.environ.get("LOCAL_RANK", 0)) == 0


def run(cfg) -> int:
    from kubetune.train.loop import train

    try:
        summary = train(cfg)
    except ConfigError as err:  # bad input, whoever found it (a UserError, the data's DataError)
        if is_main_process():
            print(bad_input_report(err), file=sys.stderr)
        if is_first_in_pod():
            write_termination_log(
                {"status": "bad_input", "exit_code": EXIT_BAD_INPUT, "reason": bad_input_reason(err)}
            )
        return EXIT_BAD_INPUT
    except Preempted as stop:
        log.warning("%s", stop)
        if is_first_in_pod():
            write_termination_log({"status": "preempted", "steps": stop.step, "exit_code": EXIT_PREEMPTED})
        return EXIT_PREEMPTED
    except Exception as err:  # noqa: BLE001 - any other failure is a training failure: report it, exit 1
        traceback.print_exc()
        if is_first_in_pod():
            write_termination_log(
                {"status": "failed", "exit_code": EXIT_FAILURE, "reason": f"{type(err).__name__}: {err}"}
            )
        return EXIT_FAILURE
    if is_main_process():
        write_termination_log(summary)
    return EXIT_OK

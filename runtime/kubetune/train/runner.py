"""Exit codes and the termination message around a run (docs/internals.md "kubetune.train").

0 done (or already done), 2 bad input, 1 training failure, 143 stopped by SIGTERM after its checkpoint.
"""

from __future__ import annotations

import logging
import os
import sys
import traceback

from kubetune.train.errors import EXIT_FAILURE, EXIT_OK, EXIT_PREEMPTED, Preempted, UserError
from kubetune.train.outputs import write_termination_log

log = logging.getLogger("kubetune.train")


def is_main_process() -> bool:
    return int(os.environ.get("RANK", 0)) == 0


def run(cfg) -> int:
    from kubetune.train.loop import train

    try:
        summary = train(cfg)
    except UserError as err:
        if is_main_process():
            print(err.report(), file=sys.stderr)
            write_termination_log({"status": "bad_input", "exit_code": err.exit_code, "reason": err.problem})
        return err.exit_code
    except Preempted as stop:
        log.warning("%s", stop)
        if is_main_process():
            write_termination_log({"status": "preempted", "steps": stop.step, "exit_code": EXIT_PREEMPTED})
        return EXIT_PREEMPTED
    except Exception as err:  # noqa: BLE001 - any other failure is a training failure: report it, exit 1
        traceback.print_exc()
        if is_main_process():
            write_termination_log(
                {"status": "failed", "exit_code": EXIT_FAILURE, "reason": f"{type(err).__name__}: {err}"}
            )
        return EXIT_FAILURE
    if is_main_process() and summary.get("status") != "already_complete":
        write_termination_log(summary)
    return EXIT_OK

"""A graceful stop: on SIGTERM the operator keeps serving for a drain period, then stops kopf.

When an operator pod is deleted, the API server and Services keep sending it admission requests
until the endpoint removal has spread; a webhook that stops at once refuses creates in that window
("connection refused"), although another replica is ready. So the operator runs kopf in a thread
(kopf installs no signal handlers there), and the main thread waits for SIGTERM/SIGINT, keeps
serving `drain_seconds` more, and then sets kopf's stop flag.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable

log = logging.getLogger("kubetune_operator")


def run_until_terminated(
    run: Callable[[threading.Event], None],
    *,
    drain_seconds: float,
    signals: tuple[signal.Signals, ...] = (signal.SIGTERM, signal.SIGINT),
) -> None:
    """Call run(stop_flag) in a thread; on the first signal wait drain_seconds, then set stop_flag."""
    stop = threading.Event()
    received = threading.Event()
    failure: list[BaseException] = []

    def target() -> None:
        try:
            run(stop)
        except BaseException as err:  # noqa: BLE001 - re-raised in the main thread
            failure.append(err)
        finally:
            received.set()  # kopf ended on its own: nothing left to drain

    previous = {sig: signal.signal(sig, lambda *_: received.set()) for sig in signals}
    worker = threading.Thread(target=target, name="kopf", daemon=True)
    worker.start()
    try:
        received.wait()
        if worker.is_alive():
            log.info("stopping: serving %.0f s more while this pod leaves the endpoints", drain_seconds)
            stop.wait(drain_seconds)
            stop.set()
        worker.join()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if failure:
        raise failure[0]

"""The children cannot be built yet (a referenced ConfigMap or Secret is missing): the job stays
Pending saying what it waits for, and looks again soon (nothing watches a ConfigMap that does not
exist yet)."""

from __future__ import annotations

from kubetune_operator.policies.draft import PENDING, Draft

CONFIG_RETRY_SECONDS = 10.0


def wait_for_config(d: Draft) -> bool:
    if d.obs.waiting is None:
        return False
    reason, message = d.obs.waiting
    d.cond("Created", False, reason, message)
    d.phase(PENDING, reason, message)
    d.workers(d.live, d.spec.workers)
    d.decision.wake_in(CONFIG_RETRY_SECONDS)
    return True

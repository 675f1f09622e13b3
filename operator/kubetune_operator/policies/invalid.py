"""A job whose spec or config does not validate fails at once with the validation report (every
problem, each with its key path and fix); its children are not built, and workers an earlier valid
generation started are scaled to zero."""

from __future__ import annotations

from kubetune_operator.policies.draft import Draft
from kubetune_operator.policies.outcomes import fail
from kubetune_operator.spec import report


def fail_invalid(d: Draft) -> bool:
    if not d.obs.problems and d.obs.spec is not None:
        return False
    fail(d, d.obs.problem_reason, report(d.obs.problems), d.created and bool(d.live))
    return True

"""The validating admission webhook: the same validation as the reconciler, at `kubectl apply` time."""

from __future__ import annotations

from typing import Any

import kopf

from kubetune_operator.spec import GROUP, PLURAL, VERSION, report, validate_job

# The URL path of the webhook (kopf routes by handler id): https://<host>:<port>/validate-finetunejob
WEBHOOK_ID = "validate-finetunejob"


def review(body: Any) -> None:
    """Refuse a job with every problem listed by key path, or return to admit it."""
    validation = validate_job(body)
    if not validation.ok:
        raise kopf.AdmissionError(report(validation.problems), code=422)


def register(registry: kopf.OperatorRegistry) -> None:
    @kopf.on.validate(
        GROUP, VERSION, PLURAL, id=WEBHOOK_ID, operations=["CREATE", "UPDATE"], registry=registry
    )
    def validate(body: Any, **_: Any) -> None:
        review(body)

"""The validating admission webhook: the same validation as the reconciler, at `kubectl apply` time."""

from __future__ import annotations

import inspect
import logging
from collections.abc import AsyncIterator
from typing import Any

import kopf

from kubetune_operator.spec import GROUP, PLURAL, VERSION, AdmissionPolicy, report, validate_job

# The URL path of the webhook (kopf routes by handler id): https://<host>:<port>/validate-finetunejob
WEBHOOK_ID = "validate-finetunejob"
# How often the certificate files are re-read to notice a renewal (cert-manager, a rotated Secret).
CERT_CHECK_SECONDS = 30.0

log = logging.getLogger("kubetune_operator")


class CertReloadingServer(kopf.WebhookServer):
    """kopf's webhook server, serving a renewed certificate without a restart.

    kopf (>= 1.41) re-reads tls.crt/tls.key every `file_check_interval` seconds and, when their
    content changed, closes the HTTPS listener and opens it again with the new pair (an admission
    call in that instant fails as it would against a restarting pod; `failurePolicy` decides). This
    subclass sets the interval and logs the reload, which kopf does only at debug level. The files
    are compared by content, not mtime: a Secret volume swaps a symlink to a new directory. A pair
    that does not match (a key written before its certificate) fails to load and stops the
    operator, whose restart then reads the finished pair.
    """

    def __init__(self, *, file_check_interval: float = CERT_CHECK_SECONDS, **kwargs: Any) -> None:
        if "file_check_interval" not in inspect.signature(kopf.WebhookServer.__init__).parameters:
            raise RuntimeError(f"kopf {kopf.__version__} cannot reload a renewed certificate; kopf>=1.41 can")
        super().__init__(file_check_interval=file_check_interval, **kwargs)
        self.reloads = 0

    async def __call__(self, fn: Any) -> AsyncIterator[Any]:
        first = True
        async for client_config in super().__call__(fn):
            if not first:
                self.reloads += 1
                log.info(
                    "webhook certificate files changed: serving the renewed certificate",
                    extra={"certfile": str(self.certfile), "reloads": self.reloads},
                )
            first = False
            yield client_config


def review(body: Any, policy: AdmissionPolicy | None = None) -> None:
    """Refuse a job with every problem listed by key path, or return to admit it."""
    validation = validate_job(body, policy)
    if not validation.ok:
        raise kopf.AdmissionError(report(validation.problems), code=422)


def register(registry: kopf.OperatorRegistry, policy: AdmissionPolicy | None = None) -> None:
    @kopf.on.validate(
        GROUP, VERSION, PLURAL, id=WEBHOOK_ID, operations=["CREATE", "UPDATE"], registry=registry
    )
    def validate(body: Any, **_: Any) -> None:
        review(body, policy)

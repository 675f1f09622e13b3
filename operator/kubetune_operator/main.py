"""`kubetune-operator`: run the FineTuneJob operator against the current KUBECONFIG (or in-cluster).

kubetune-operator --standalone --namespace team-a
kubetune-operator --webhook-cert-dir /certs --metrics-port 8080 --health-port 8081
"""

from __future__ import annotations

import argparse
import logging
import os
import random
import sys
from pathlib import Path

import kopf

from kubetune_operator import handlers, metrics, webhook
from kubetune_operator.k8s import Kube
from kubetune_operator.options import DEFAULT_IMAGE, BuildOptions, parse_resources
from kubetune_operator.reconcile import Reconciler
from kubetune_operator.shutdown import run_until_terminated
from kubetune_operator.spec import GROUP, PLURAL, VERSION, AdmissionPolicy

log = logging.getLogger("kubetune_operator")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kubetune-operator", description=__doc__.splitlines()[0])
    scope = parser.add_mutually_exclusive_group()
    scope.add_argument("--namespace", action="append", default=[], metavar="NS",
                       help="watch this namespace (repeatable; globs like team-* work)")  # fmt: skip
    scope.add_argument("--all-namespaces", action="store_true", help="watch every namespace (the default)")
    parser.add_argument("--webhook-cert-dir", type=Path, metavar="DIR",
                        help="directory with tls.crt and tls.key; without it no webhook server runs")  # fmt: skip
    parser.add_argument("--webhook-port", type=int, default=9443, help="webhook HTTPS port (default 9443)")
    parser.add_argument(
        "--webhook-host", default="0.0.0.0", help="address the webhook listens on (default 0.0.0.0)"
    )
    parser.add_argument("--metrics-port", type=int, default=8080, help="Prometheus /metrics port; 0 = off")
    parser.add_argument("--health-port", type=int, default=8081, help="liveness /healthz port; 0 = off")
    peering = parser.add_mutually_exclusive_group()
    peering.add_argument("--peering", metavar="NAME",
                         help="kopf peering object shared by the replicas (default: 'kubetune' when its CRD exists)")  # fmt: skip
    peering.add_argument(
        "--standalone", action="store_true", help="no peering: the only operator on the cluster"
    )
    parser.add_argument("--priority", type=int, default=None,
                        help="peering priority; the highest live replica works, the others wait (default: random)")  # fmt: skip
    parser.add_argument(
        "--log-format", choices=("json", "plain"), default="json", help="log format (default json)"
    )
    parser.add_argument("--verbose", action="store_true", help="debug logging")
    parser.add_argument(
        "--shutdown-drain",
        type=float,
        default=5.0,
        metavar="SECONDS",
        help="after SIGTERM keep serving (the webhook above all) this long before stopping, "
        "while the pod leaves the Service's endpoints (default 5; keep it below the pod's "
        "terminationGracePeriodSeconds)",
    )
    parser.add_argument("--runtime-image", default=os.environ.get("KUBETUNE_RUNTIME_IMAGE", DEFAULT_IMAGE),
                        help="image of training pods whose job names none (env KUBETUNE_RUNTIME_IMAGE)")  # fmt: skip
    parser.add_argument("--runtime-resources", metavar="JSON", default=os.environ.get("KUBETUNE_RUNTIME_RESOURCES", ""),
                        help='worker requests/limits of jobs without spec.resources, as {"requests": {...}, '
                             '"limits": {...}} (env KUBETUNE_RUNTIME_RESOURCES)')  # fmt: skip
    parser.add_argument("--workers", type=int, default=8, help="jobs reconciled in parallel (default 8)")
    policy = parser.add_argument_group("what job authors may put in training pods (chart: training.policy)")
    policy.add_argument("--allow-host-path", action=argparse.BooleanOptionalAction,
                        default=_env_flag("KUBETUNE_ALLOW_HOST_PATH", False),
                        help="admit hostPath volumes (default off; env KUBETUNE_ALLOW_HOST_PATH)")  # fmt: skip
    policy.add_argument("--allow-service-accounts", action=argparse.BooleanOptionalAction,
                        default=_env_flag("KUBETUNE_ALLOW_SERVICE_ACCOUNTS", True),
                        help="admit spec.serviceAccountName (default on; env KUBETUNE_ALLOW_SERVICE_ACCOUNTS)")  # fmt: skip
    policy.add_argument("--allowed-image", action="append", metavar="PATTERN",
                        default=[p for p in os.environ.get("KUBETUNE_ALLOWED_IMAGES", "").split(",") if p.strip()],
                        help="admit only spec.image matching one of these shell patterns (repeatable; "
                             "none: any image; env KUBETUNE_ALLOWED_IMAGES, comma-separated)")  # fmt: skip
    parser.add_argument("--network-policy", action=argparse.BooleanOptionalAction,
                        default=_env_flag("KUBETUNE_NETWORK_POLICY", False),
                        help="give each job a NetworkPolicy: its workers accept connections only from each other "
                             "(default off; env KUBETUNE_NETWORK_POLICY)")  # fmt: skip
    return parser


def _env_flag(name: str, default: bool) -> bool:
    value = os.environ.get(name, "").strip().lower()
    return default if not value else value in ("1", "true", "yes", "on")


def policy_for(args: argparse.Namespace) -> AdmissionPolicy:
    return AdmissionPolicy(
        allow_host_path=args.allow_host_path,
        allow_service_accounts=args.allow_service_accounts,
        allowed_images=tuple(pattern.strip() for pattern in args.allowed_image),
    )


def exact_namespaces(patterns: list[str]) -> bool:
    """Whether every --namespace is a plain name (kopf treats `*`, `?`, `!` and `,` as patterns)."""
    return bool(patterns) and not any(set("*?!,") & set(pattern) for pattern in patterns)


def settings_for(args: argparse.Namespace) -> kopf.OperatorSettings:
    settings = kopf.OperatorSettings()
    # With only exact namespace names there is nothing to discover: kopf skips listing and watching
    # Namespaces and CRDs (cluster-scoped reads a namespaced ServiceAccount may not hold; without
    # the rights kopf retries those lists for about a minute before falling back to the names).
    # Resource discovery (/apis) still runs; every authenticated user may read it.
    settings.scanning.disabled = exact_namespaces(args.namespace)
    # Server-side filtering: the operator only ever needs the pods and StatefulSets it created.
    selector = ",".join(f"{k}={v}" for k, v in handlers.CHILD_SELECTOR.items())
    settings.watching.label_selectors["v1", "pods"] = selector
    settings.watching.label_selectors["v1", "configmaps"] = selector
    settings.watching.label_selectors["apps", "v1", "statefulsets"] = selector
    # Replicas get distinct priorities: the highest live one works, the others stay paused until
    # its keep-alive lapses (kopf pauses *all* replicas of equal priority, which would stop work).
    settings.peering.priority = args.priority if args.priority is not None else random.randint(1, 2**30)
    settings.peering.name = args.peering or "kubetune"
    settings.peering.mandatory = args.peering is not None
    settings.peering.standalone = args.standalone
    # kopf's own per-handler k8s events are for create/update handlers, which this operator has none of.
    settings.posting.level = logging.WARNING
    if args.webhook_cert_dir is not None:
        settings.admission.server = webhook.CertReloadingServer(
            addr=args.webhook_host,
            port=args.webhook_port,
            certfile=args.webhook_cert_dir / "tls.crt",
            pkeyfile=args.webhook_cert_dir / "tls.key",
        )
    return settings


def _quiet_handler_successes(record: logging.LogRecord) -> bool:
    return not (record.levelno == logging.INFO and record.getMessage().startswith("Handler "))


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.webhook_cert_dir is not None:
        for name in ("tls.crt", "tls.key"):
            if not (args.webhook_cert_dir / name).is_file():
                print(
                    f"kubetune-operator: {args.webhook_cert_dir / name} is missing (--webhook-cert-dir)",
                    file=sys.stderr,
                )
                return 2
    try:
        default_resources = parse_resources(args.runtime_resources)
    except ValueError as err:
        print(
            f"kubetune-operator: --runtime-resources (env KUBETUNE_RUNTIME_RESOURCES): {err}", file=sys.stderr
        )
        return 2

    kopf.configure(
        verbose=args.verbose,
        log_format=kopf.LogFormat.JSON if args.log_format == "json" else kopf.LogFormat.FULL,
    )
    if not args.verbose:
        # kopf logs every watch-event handler call at INFO: one line per pod change and progress
        # report. The operator logs what matters itself (transitions, restarts, errors).
        logging.getLogger("kopf.objects").addFilter(_quiet_handler_successes)
    registry = kopf.OperatorRegistry()
    handlers.register(registry)
    policy = policy_for(args)
    if args.webhook_cert_dir is not None:
        webhook.register(registry, policy)

    options = BuildOptions.from_env(
        os.environ,
        default_image=args.runtime_image,
        default_resources=default_resources,
        policy=policy,
        network_policy=args.network_policy,
    )
    settings = settings_for(args)
    state = handlers.OperatorState(reconciler=Reconciler(Kube(), options), workers=args.workers)
    metrics.serve(args.metrics_port)
    log.info(
        "kubetune-operator watching %s/%s/%s in %s",
        GROUP,
        VERSION,
        PLURAL,
        ", ".join(args.namespace) if args.namespace else "all namespaces",
        extra={
            "launcher": list(options.launcher),
            "runtime_image": options.default_image,
            "runtime_resources": default_resources.model_dump() if default_resources else None,
            "policy": {
                "allow_host_path": policy.allow_host_path,
                "allow_service_accounts": policy.allow_service_accounts,
                "allowed_images": list(policy.allowed_images),
            },
            "namespace_scanning": not settings.scanning.disabled,
        },
    )
    run_until_terminated(
        lambda stop_flag: kopf.run(
            registry=registry,
            settings=settings,
            clusterwide=not args.namespace,
            namespaces=args.namespace,
            standalone=args.standalone or None,
            liveness_endpoint=f"http://0.0.0.0:{args.health_port}/healthz" if args.health_port else None,
            memo=kopf.Memo(state=state),
            stop_flag=stop_flag,
        ),
        drain_seconds=args.shutdown_drain,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

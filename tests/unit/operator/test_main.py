import kopf
import pytest
from kubetune_operator import handlers, main, webhook

from tests.unit.operator.cases import bad_job, job


def test_the_documented_flags_parse():
    args = main.build_parser().parse_args(
        ["--namespace", "a", "--namespace", "b", "--webhook-port", "8443", "--webhook-cert-dir", "/certs",
         "--webhook-host", "127.0.0.1", "--metrics-port", "0", "--health-port", "9000", "--standalone",
         "--log-format", "plain"]
    )  # fmt: skip
    assert (
        args.namespace == ["a", "b"] and args.webhook_port == 8443 and str(args.webhook_cert_dir) == "/certs"
    )
    assert (args.metrics_port, args.health_port, args.standalone, args.log_format) == (0, 9000, True, "plain")
    defaults = main.build_parser().parse_args([])
    assert (defaults.webhook_port, defaults.metrics_port, defaults.health_port) == (9443, 8080, 8081)
    assert defaults.webhook_cert_dir is None and defaults.log_format == "json" and defaults.peering is None
    with pytest.raises(SystemExit):
        main.build_parser().parse_args(["--namespace", "a", "--all-namespaces"])
    with pytest.raises(SystemExit):
        main.build_parser().parse_args(["--peering", "x", "--standalone"])


def test_settings_webhook_server_and_peering(tmp_path):
    args = main.build_parser().parse_args(["--webhook-cert-dir", str(tmp_path), "--webhook-port", "9555"])
    settings = main.settings_for(args)
    server = settings.admission.server
    assert isinstance(server, kopf.WebhookServer)
    assert (server.port, server.addr) == (9555, "0.0.0.0")
    assert str(server.certfile) == str(tmp_path / "tls.crt") and str(server.pkeyfile) == str(
        tmp_path / "tls.key"
    )
    assert settings.peering.name == "kubetune" and not settings.peering.mandatory
    assert settings.admission.managed is None  # the chart or the test registers the webhook, not kopf
    explicit = main.settings_for(main.build_parser().parse_args(["--peering", "team", "--priority", "7"]))
    assert (explicit.peering.name, explicit.peering.mandatory, explicit.peering.priority) == ("team", True, 7)
    assert main.settings_for(main.build_parser().parse_args([])).admission.server is None


def test_missing_certificates_are_reported(tmp_path, capsys):
    assert main.main(["--webhook-cert-dir", str(tmp_path)]) == 2
    assert "tls.crt is missing" in capsys.readouterr().err


def test_handlers_register_without_resource_changing_handlers():
    registry = kopf.OperatorRegistry()
    handlers.register(registry)
    webhook.register(registry)
    # No create/update/delete handlers, daemons or timers: nothing that needs a finalizer or
    # keeps state in the object's annotations.
    assert list(registry._changing.get_all_handlers()) == []
    assert list(registry._spawning.get_all_handlers()) == []
    assert len(list(registry._watching.get_all_handlers())) == 3
    assert [h.id for h in registry._webhooks.get_all_handlers()] == [webhook.WEBHOOK_ID]


def test_the_webhook_admits_good_jobs_and_refuses_bad_ones_with_the_report():
    webhook.review(job())
    with pytest.raises(kopf.AdmissionError) as refused:
        webhook.review(bad_job("qlora-without-4bit"))
    assert refused.value.code == 422
    assert "spec.config.load_in_4bit" in str(refused.value) and "fix:" in str(refused.value)

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
    assert len(list(registry._watching.get_all_handlers())) == 4  # jobs, pods, configmaps, statefulsets
    assert [h.id for h in registry._webhooks.get_all_handlers()] == [webhook.WEBHOOK_ID]


def test_the_webhook_admits_good_jobs_and_refuses_bad_ones_with_the_report():
    webhook.review(job())
    with pytest.raises(kopf.AdmissionError) as refused:
        webhook.review(bad_job("qlora-without-4bit"))
    assert refused.value.code == 422
    assert "spec.config.load_in_4bit" in str(refused.value) and "fix:" in str(refused.value)


def test_runtime_resources_come_from_the_flag_or_the_charts_env(monkeypatch):
    assert main.build_parser().parse_args([]).runtime_resources == ""
    monkeypatch.setenv("KUBETUNE_RUNTIME_RESOURCES", '{"requests": {"cpu": "8"}}')
    assert main.build_parser().parse_args([]).runtime_resources == '{"requests": {"cpu": "8"}}'
    args = main.build_parser().parse_args(["--runtime-resources", '{"limits": {"memory": "1Gi"}}'])
    assert args.runtime_resources == '{"limits": {"memory": "1Gi"}}'  # the flag wins, as --runtime-image


@pytest.mark.parametrize("where", ["flag", "env"])
def test_bad_runtime_resources_stop_the_operator_before_it_starts(where, monkeypatch, capsys):
    monkeypatch.setattr(kopf, "run", lambda **_: pytest.fail("kopf.run must not be reached"))
    bad = '{"requests": {"cpu": "8"}'
    if where == "env":
        monkeypatch.setenv("KUBETUNE_RUNTIME_RESOURCES", bad)
        argv = []
    else:
        argv = ["--runtime-resources", bad]
    assert main.main(argv) == 2
    err = capsys.readouterr().err
    assert "--runtime-resources (env KUBETUNE_RUNTIME_RESOURCES): not valid JSON" in err


def test_exact_namespaces_need_no_cluster_scanning():
    def scanning_disabled(*argv):
        return main.settings_for(main.build_parser().parse_args(list(argv))).scanning.disabled

    assert scanning_disabled("--namespace", "team-a", "--namespace", "team-b")
    # Patterns need the namespace list to be expanded; every namespace needs CRD watching.
    assert not scanning_disabled("--namespace", "team-a", "--namespace", "team-*")
    assert not scanning_disabled("--namespace", "!kube-system")
    assert not scanning_disabled("--namespace", "a,b")
    assert not scanning_disabled("--all-namespaces")
    assert not scanning_disabled()


def test_the_webhook_server_rechecks_its_certificate_every_30_seconds(tmp_path):
    server = main.settings_for(main.build_parser().parse_args(["--webhook-cert-dir", str(tmp_path)]))
    assert isinstance(server.admission.server, webhook.CertReloadingServer)
    assert server.admission.server.file_check_interval == webhook.CERT_CHECK_SECONDS == 30


def test_a_renewed_certificate_is_served_without_a_restart(tmp_path, caplog):
    """Real TLS: the listener presents the new certificate once tls.crt/tls.key change on disk."""
    import asyncio
    import ssl

    from tests.unit.operator.cluster_support import free_port, write_certificates

    certs = tmp_path / "certs"
    write_certificates(certs)
    port = free_port()

    async def served_certificate() -> bytes:
        context = ssl.create_default_context()
        context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
        _, writer = await asyncio.open_connection("127.0.0.1", port, ssl=context)
        try:
            return writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
        finally:
            writer.close()

    async def scenario():
        server = webhook.CertReloadingServer(addr="127.0.0.1", port=port, certfile=certs / "tls.crt",
                                             pkeyfile=certs / "tls.key", file_check_interval=0.05)  # fmt: skip

        async def review(*_args, **_kwargs):
            return {}

        configs = server(review)
        await configs.__anext__()
        first = await served_certificate()
        # As kopf does, ask for the next client config at once: it comes after a reload.
        reloaded = asyncio.ensure_future(configs.__anext__())
        await asyncio.sleep(0.3)  # unchanged files: no reload
        assert not reloaded.done() and server.reloads == 0 and await served_certificate() == first
        # A Secret volume renews by swapping a directory symlink: the paths stay, the content changes.
        renewed = tmp_path / "renewed"
        write_certificates(renewed)
        for name in ("tls.key", "tls.crt"):
            (renewed / name).replace(certs / name)
        await asyncio.wait_for(reloaded, 10)
        second = await served_certificate()
        await configs.aclose()
        return first, second, server.reloads

    with caplog.at_level("INFO", logger="kubetune_operator"):
        first, second, reloads = asyncio.run(asyncio.wait_for(scenario(), 30))
    assert first != second and second == ssl.PEM_cert_to_DER_cert((certs / "tls.crt").read_text())
    assert reloads == 1
    assert "webhook certificate files changed: serving the renewed certificate" in caplog.text

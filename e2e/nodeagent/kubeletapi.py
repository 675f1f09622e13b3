"""The part of the kubelet API the API server proxies for `kubectl logs`:
GET /containerLogs/{namespace}/{pod}/{container}?follow=&previous=&tailLines=&limitBytes=
over HTTPS, clients authenticated by certificates from the cluster CA."""

from __future__ import annotations

import logging
import ssl
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlparse

log = logging.getLogger("nodeagent.kubeletapi")


def _true(q: dict, k: str) -> bool:
    return q.get(k, ["false"])[0].lower() in ("1", "true", "yes")


def make_handler(agent):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, fmt, *args):  # noqa: A002
            log.debug(fmt, *args)

        def _error(self, code: int, msg: str) -> None:
            body = msg.encode()
            self.send_response(code)
            self.send_header("Content-Type", "text/plain; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _chunk(self, data: bytes) -> None:
            if data:
                self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
                self.wfile.flush()

        def do_GET(self):  # noqa: N802
            u = urlparse(self.path)
            if u.path in ("/healthz", "/readyz", "/livez"):
                return self._error(200, "ok")
            parts = [unquote(p) for p in u.path.strip("/").split("/")]
            if len(parts) != 4 or parts[0] != "containerLogs":
                return self._error(404, f"not supported by the kubetune node agent: {u.path}")
            _, ns, pod, cname = parts
            q = parse_qs(u.query)
            w = agent.find(ns, pod)
            c = w.container(cname) if w else None
            if c is None:
                return self._error(404, f'container "{cname}" in pod "{pod}" not found')
            previous = _true(q, "previous")
            f = c.log_file(previous=previous)
            if f is None or not f.exists():
                what = "previous terminated" if previous else "current"
                return self._error(400, f'{what} container "{cname}" in pod "{pod}" not found')
            run_index = c.runs - (2 if previous else 1)
            data = f.read_bytes()
            if "tailLines" in q:
                n = int(q["tailLines"][0])
                lines = data.splitlines(keepends=True)
                data = b"".join(lines[-n:]) if n > 0 else b""
            limit = int(q["limitBytes"][0]) if "limitBytes" in q else None
            if limit is not None:
                data = data[:limit]
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            try:
                self._chunk(data)
                sent = len(data)
                if _true(q, "follow") and not previous and (limit is None or sent < limit):
                    pos = f.stat().st_size
                    with open(f, "rb") as fh:
                        fh.seek(pos)
                        while True:
                            chunk = fh.read(65536)
                            if chunk:
                                if limit is not None:
                                    chunk = chunk[: limit - sent]
                                self._chunk(chunk)
                                sent += len(chunk)
                                if limit is not None and sent >= limit:
                                    break
                                continue
                            still = (
                                agent.find(ns, pod) is w and c.runs - 1 == run_index and (c.proc is not None)
                            )
                            if not still:
                                rest = fh.read()
                                self._chunk(rest)
                                break
                            time.sleep(0.2)
                self.wfile.write(b"0\r\n\r\n")
                self.wfile.flush()
            except (BrokenPipeError, ConnectionResetError):
                pass
            self.close_connection = True

    return Handler


def serve(agent, host: str, port: int, cert: Path, key: Path, ca: Path) -> ThreadingHTTPServer:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(str(cert), str(key))
    ctx.load_verify_locations(str(ca))
    ctx.verify_mode = ssl.CERT_REQUIRED
    srv = ThreadingHTTPServer((host, port), make_handler(agent))
    srv.daemon_threads = True
    srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
    threading.Thread(target=srv.serve_forever, name="kubelet-api", daemon=True).start()
    return srv

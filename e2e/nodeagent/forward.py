"""A TCP forwarder (threads): pods reach the API server, which listens on 127.0.0.1 only,
through the bridge's gateway address."""

from __future__ import annotations

import logging
import socket
import threading

log = logging.getLogger("nodeagent.forward")


def _pipe(src: socket.socket, dst: socket.socket) -> None:
    try:
        while True:
            data = src.recv(65536)
            if not data:
                break
            dst.sendall(data)
    except OSError:
        pass
    finally:
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class TCPForwarder(threading.Thread):
    def __init__(self, listen: tuple[str, int], target: tuple[str, int]) -> None:
        super().__init__(name=f"forward-{listen[0]}:{listen[1]}", daemon=True)
        self.target = target
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(listen)
        self.sock.listen(128)

    def run(self) -> None:
        while True:
            conn, _ = self.sock.accept()
            try:
                up = socket.create_connection(self.target, timeout=5)
                up.settimeout(None)
            except OSError as e:
                log.warning("forward to %s failed: %s", self.target, e)
                conn.close()
                continue
            for a, b in ((conn, up), (up, conn)):
                threading.Thread(target=_pipe, args=(a, b), daemon=True).start()

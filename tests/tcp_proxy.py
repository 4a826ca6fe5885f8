"""A TCP forwarder in front of the test PostgreSQL that a test can switch off and on.

Switching it off closes the listening socket (new connections are refused) and every forwarded
connection (pooled connections die mid-session): a real network outage, seen by the real
driver, with no privileges needed and no timing involved.
"""

from __future__ import annotations

import select
import socket
import threading
from contextlib import suppress

from sqlalchemy import make_url

_POLL_S = 0.05  # how often the forwarding threads check whether the proxy was switched off


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class TcpProxy:
    def __init__(self, target_url: str) -> None:
        target = make_url(target_url)
        self._target = (target.host or "127.0.0.1", target.port or 5432)
        self.port = free_port()
        self.url = target.set(host="127.0.0.1", port=self.port).render_as_string(hide_password=False)
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._pumps: list[threading.Thread] = []
        self._acceptor: threading.Thread | None = None
        self._running = threading.Event()

    def start(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen()
        self._running.set()
        self._acceptor = threading.Thread(target=self._accept_loop, args=(listener,), daemon=True)
        self._acceptor.start()

    def stop(self) -> None:
        """Refuse new connections and cut every open one."""
        self._running.clear()
        if self._acceptor is not None:
            self._acceptor.join()  # it closes the listener on its way out
            self._acceptor = None
        with self._lock:
            pumps, self._pumps = self._pumps, []
            sockets, self._sockets = self._sockets, []
        for sock in sockets:
            with suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        for pump in pumps:
            pump.join()
        for sock in sockets:
            sock.close()

    def _accept_loop(self, listener: socket.socket) -> None:
        with listener:
            while self._running.is_set():
                if not select.select([listener], [], [], _POLL_S)[0]:
                    continue
                client, _ = listener.accept()
                server = socket.create_connection(self._target)
                with self._lock:
                    self._sockets += [client, server]
                    for source, sink in ((client, server), (server, client)):
                        pump = threading.Thread(target=self._pump, args=(source, sink), daemon=True)
                        self._pumps.append(pump)
                        pump.start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        while self._running.is_set():
            if not select.select([source], [], [], _POLL_S)[0]:
                continue
            try:
                data = source.recv(65536)
                if not data:
                    break
                sink.sendall(data)
            except OSError:
                break
        # One side hung up (or the proxy stopped): hang up the other side too.
        for sock in (source, sink):
            with suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

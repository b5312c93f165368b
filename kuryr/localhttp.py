"""Small HTTP requests to local daemons (dockerd, the plugin itself) over a unix
socket or loopback TCP, with the standard library only."""

from __future__ import annotations

import http.client
import socket
from urllib.parse import urlparse


class UnixHTTPConnection(http.client.HTTPConnection):
    """HTTP over a unix socket (dockerd's, Kuryr's plugin, the CNI daemon's)."""

    def __init__(self, path: str, timeout: float | None) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        self.sock = connect_unix(self._path, self.timeout)


def connect_unix(path: str, timeout: float | None) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(path)
    except OSError:
        sock.close()
        raise
    return sock


def http_request(uri: str, method: str, path: str, timeout: float,
                 limit: int | None = 4096, body: bytes | None = None) -> tuple[int, str]:
    """``method path`` on unix:///x.sock, tcp://HOST:PORT or http://HOST:PORT; the
    first ``limit`` bytes of the answer (None: all of it).  A ``body`` is sent as JSON."""
    conn = connection(uri, timeout)
    try:
        if body is not None:
            conn.request(method, path, body=body, headers={"Content-Type": "application/json"})
        else:
            conn.request(method, path, body=b"" if method == "POST" else None)
        response = conn.getresponse()
        return response.status, response.read(limit).decode(errors="replace")
    finally:
        conn.close()


def connection(uri: str, timeout: float | None) -> http.client.HTTPConnection:
    """An HTTP connection (not yet open) to unix:///x.sock, tcp:// or http://."""
    parsed = urlparse(uri)
    if parsed.scheme == "unix":
        return UnixHTTPConnection(parsed.path, timeout)
    if parsed.scheme in ("http", "tcp"):
        return http.client.HTTPConnection(parsed.hostname or "127.0.0.1", parsed.port,
                                          timeout=timeout)
    raise ValueError(f"{uri} is neither unix:// nor http://")

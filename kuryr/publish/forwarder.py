"""Published ports: listen on the host, connect from inside the container.

A container on a Neutron network has no address the host's root namespace
can reach (its traffic lives in OVN's logical switch), so a NAT rule would
have nowhere to send packets.  Instead each published port gets a listener in
the host namespace, and every connection (or UDP peer) gets an upstream
socket created *inside the container's namespace*, connected to the
container's own address.  One asyncio loop in one thread serves them all.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
import threading
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, TypeVar

from kuryr import errors
from kuryr.publish.netns import SocketFactory
from kuryr.publish.spec import Published

LOG = logging.getLogger(__name__)
UDP_IDLE_SECONDS = 60
RELAY_CHUNK = 65536
T = TypeVar("T")


@dataclass
class Target:
    """Where the traffic of one endpoint's published ports goes."""

    netns: str
    address: str  # the container's address on the Neutron network


@dataclass
class _Listener:
    published: Published
    bound_port: int
    close: Callable[[], object]  # closes the server/transport


@dataclass
class _Endpoint:
    target: Target
    listeners: list[_Listener] = field(default_factory=list)


def _bind(published: Published, kind: int) -> socket.socket:
    """Bind the host side; the first free port of a range, any port for 0."""
    host = published.host_ip or "::"
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    last = published.host_port_end or published.host_port
    for port in range(published.host_port, last + 1):
        sock = socket.socket(family, kind)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6 and not published.host_ip:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            sock.bind((host, port))
            sock.setblocking(False)
            return sock
        except OSError as exc:
            sock.close()
            if exc.errno != errno.EADDRINUSE or port == last:
                where = published.label()
                if exc.errno == errno.EADDRINUSE:
                    raise errors.Conflict(f"host port {where} is already in use") from exc
                raise errors.InvalidInput(f"cannot publish {where}: {exc.strerror}") from exc
    raise AssertionError("unreachable")


class Forwarder:
    def __init__(self, sockets: SocketFactory | None = None) -> None:
        self.sockets = sockets or SocketFactory()
        self.loop = asyncio.new_event_loop()
        self._endpoints: dict[str, _Endpoint] = {}
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self.loop.run_forever, name="publish",
                                        daemon=True)

    def start(self) -> None:
        """The forwarder's event loop and the thread that opens sockets in
        containers' namespaces (started by the daemon, kuryr/core/daemon.py)."""
        self.sockets.start()
        self._thread.start()

    def stop(self) -> None:
        """Close every listener (the host ports are free again), then the threads."""
        for endpoint_id in list(self.published()):
            self.unpublish(endpoint_id)
        if self._thread.is_alive():
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(timeout=5)
        self.sockets.close()

    # -- public API (any thread) ---------------------------------------------------------
    def publish(self, endpoint_id: str, target: Target,
                ports: list[Published]) -> list[Published]:
        """Open every listener of an endpoint, or none (a busy port undoes the others).

        Returns the ports as bound (host port 0 replaced by the real one)."""
        with self._lock:
            if endpoint_id in self._endpoints:
                return [lst.published for lst in self._endpoints[endpoint_id].listeners]
        entry = _Endpoint(target)
        try:
            for published in ports:
                entry.listeners.append(self._run(self._listen(published, target)))
        except BaseException:
            for listener in entry.listeners:
                self._run(self._close(listener))
            raise
        with self._lock:
            self._endpoints[endpoint_id] = entry
        LOG.info("endpoint %s: published %s", endpoint_id[:12],
                 ", ".join(lst.published.label() for lst in entry.listeners))
        return [lst.published for lst in entry.listeners]

    def unpublish(self, endpoint_id: str) -> bool:
        with self._lock:
            entry = self._endpoints.pop(endpoint_id, None)
        if entry is None:
            return False
        for listener in entry.listeners:
            self._run(self._close(listener))
        return True

    def published(self) -> dict[str, list[Published]]:
        with self._lock:
            return {ep: [lst.published for lst in e.listeners]
                    for ep, e in self._endpoints.items()}

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=30)

    # -- inside the loop -----------------------------------------------------------------
    async def _close(self, listener: _Listener) -> None:
        listener.close()

    async def _listen(self, published: Published, target: Target) -> _Listener:
        kind = socket.SOCK_STREAM if published.proto == "tcp" else socket.SOCK_DGRAM
        sock = _bind(published, kind)
        bound = sock.getsockname()[1]
        actual = Published(published.proto, published.container_port, published.host_ip,
                           bound)
        if kind == socket.SOCK_STREAM:
            sock.listen(128)
            server = await asyncio.start_server(
                lambda r, w: self._relay_tcp(r, w, actual, target), sock=sock)
            return _Listener(actual, bound, server.close)
        transport, _ = await self.loop.create_datagram_endpoint(
            lambda: _UdpFront(self, actual, target), sock=sock)
        return _Listener(actual, bound, transport.close)

    async def _relay_tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                         published: Published, target: Target) -> None:
        family = socket.AF_INET6 if ":" in target.address else socket.AF_INET
        try:
            upstream = await self.loop.run_in_executor(
                None, self.sockets.create, target.netns, family, socket.SOCK_STREAM)
            upstream.setblocking(False)
            await asyncio.wait_for(self.loop.sock_connect(
                upstream, (target.address, published.container_port)), 10)
            up_reader, up_writer = await asyncio.open_connection(sock=upstream)
        except (TimeoutError, OSError) as exc:
            LOG.info("%s: cannot reach the container: %s", published.label(), exc)
            writer.close()
            return
        await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(RELAY_CHUNK):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
    except (ConnectionError, OSError):
        pass
    finally:
        if reader.at_eof():
            writer.close()


class _UdpFront(asyncio.DatagramProtocol):
    """One upstream UDP socket per client address, closed when idle."""

    def __init__(self, forwarder: Forwarder, published: Published, target: Target) -> None:
        self.forwarder = forwarder
        self.published = published
        self.target = target
        self.transport: asyncio.DatagramTransport | None = None
        self.peers: dict[tuple, tuple[asyncio.DatagramTransport, float]] = {}
        # The loop keeps only weak references to tasks: one still forwarding
        # must not be garbage-collected halfway.
        self._forwarding: set[asyncio.Future[None]] = set()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple) -> None:
        task = asyncio.ensure_future(self._forward(data, addr))
        self._forwarding.add(task)
        task.add_done_callback(self._forwarding.discard)

    async def _forward(self, data: bytes, addr: tuple) -> None:
        loop = self.forwarder.loop
        now = time.monotonic()
        for peer, (transport, seen) in list(self.peers.items()):
            if now - seen > UDP_IDLE_SECONDS:
                transport.close()
                del self.peers[peer]
        if addr not in self.peers:
            family = socket.AF_INET6 if ":" in self.target.address else socket.AF_INET
            sock = await loop.run_in_executor(
                None, self.forwarder.sockets.create, self.target.netns, family,
                socket.SOCK_DGRAM)
            sock.setblocking(False)
            sock.connect((self.target.address, self.published.container_port))
            front = self

            class Back(asyncio.DatagramProtocol):
                def datagram_received(self, reply: bytes, _addr: tuple) -> None:
                    if front.transport is not None:
                        front.transport.sendto(reply, addr)

            transport, _ = await loop.create_datagram_endpoint(Back, sock=sock)
            self.peers[addr] = (transport, now)
        transport, _ = self.peers[addr]
        self.peers[addr] = (transport, now)
        transport.sendto(data)

    def connection_lost(self, exc: Exception | None) -> None:
        for transport, _ in self.peers.values():
            transport.close()
        self.peers.clear()

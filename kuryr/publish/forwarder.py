"""Published ports: listen on the host, connect from inside the container.

A container on a Neutron network has no address the host's root namespace
can reach (its traffic lives in OVN's logical switch), so a NAT rule would
have nowhere to send packets.  Instead each published port gets a listener in
the host namespace, and every connection (or UDP peer) gets an upstream
socket created *inside the container's namespace*, connected to the
container's own address.  One asyncio loop in one thread serves them all.

The forwarder shares Kuryr's process, so its descriptors are the plugin's:
every flow (a TCP connection: two descriptors; a UDP peer: one) is counted
against a cap per published port and one for the process (``Limits``), and
the process's descriptor limit is raised to fit them with a reserve left for
the plugin (``fit_descriptor_budget``).  Nothing a remote client does can take
more, and nothing it does leaves a descriptor behind: every TCP ending closes
both sockets, UDP peers expire on a timer.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import resource
import socket
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

from kuryr import errors
from kuryr.publish.netns import SocketFactory
from kuryr.publish.spec import Published

LOG = logging.getLogger(__name__)
RELAY_CHUNK = 65536
CONNECT_TIMEOUT = 10.0
# Datagrams of a new UDP peer kept while its upstream socket is being made.
UDP_PENDING_MAX = 32
# Descriptors kept for everything else in the process: the plugin's HTTP
# connections, Neutron's connection pool, OVSDB, netlink, logs.
DESCRIPTOR_RESERVE = 1024
LIMIT_LOG_INTERVAL = 10.0
# TCP keepalive on both sides: a peer that vanished without a FIN or RST is
# found in KEEPIDLE + KEEPINTVL * KEEPCNT seconds, not at the idle timeout.
KEEPALIVE = {"TCP_KEEPIDLE": 60, "TCP_KEEPINTVL": 10, "TCP_KEEPCNT": 6}
T = TypeVar("T")


@dataclass(frozen=True)
class Limits:
    """How much the published ports may take ([publish] options)."""

    per_port: int = 256  # TCP connections or UDP peers of one published port
    per_process: int = 2048  # of every published port together
    tcp_idle: float = 3600.0
    udp_idle: float = 60.0


@dataclass
class Target:
    """Where the traffic of one endpoint's published ports goes."""

    netns: str
    address: str  # the container's address on the Neutron network


class _Flows:
    """Flows (TCP connections, UDP peers) open in the whole process.  Used only
    from the forwarder's loop, so no lock."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.open = 0

    def take(self) -> bool:
        if self.open >= self.limit:
            return False
        self.open += 1
        return True

    def give_back(self) -> None:
        self.open -= 1


class _Throttled:
    """A warning logged at most once per LIMIT_LOG_INTERVAL: a client hammering
    a full port must not flood the log either."""

    def __init__(self) -> None:
        self._last = -LIMIT_LOG_INTERVAL

    def warn(self, message: str, *args: object) -> None:
        now = time.monotonic()
        if now - self._last >= LIMIT_LOG_INTERVAL:
            self._last = now
            LOG.warning(message, *args)


@dataclass
class _Listener:
    published: Published
    target: Target
    close: Callable[[], object] = lambda: None  # closes the server/transport
    active: int = 0  # TCP connections open now
    relays: set[asyncio.Task[None]] = field(default_factory=set)  # those connections
    full: _Throttled = field(default_factory=_Throttled)


@dataclass
class _Endpoint:
    target: Target
    listeners: list[_Listener] = field(default_factory=list)


def fit_descriptor_budget(limits: Limits) -> Limits:
    """Raise the soft descriptor limit to fit ``limits`` (two descriptors per
    flow plus the reserve), up to the hard limit; when even that is too low,
    the process-wide cap is lowered instead, so the plugin never runs out."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 2 * limits.per_process + DESCRIPTOR_RESERVE
    ceiling = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft < ceiling:
        resource.setrlimit(resource.RLIMIT_NOFILE, (ceiling, hard))
        soft = ceiling
    if soft >= wanted:
        return limits
    fitted = max(1, (soft - DESCRIPTOR_RESERVE) // 2)
    LOG.warning("descriptor limit %d (hard) leaves room for %d published-port "
                "connections, not [publish] max_connections = %d: using %d", hard,
                fitted, limits.per_process, fitted)
    return replace(limits, per_process=fitted, per_port=min(limits.per_port, fitted))


def _bind(published: Published, kind: int) -> socket.socket:
    """Bind the host side, no wider than asked; the first free port of a range,
    any port for 0."""
    host = published.host_ip or "::"
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    last = published.host_port_end or published.host_port
    for port in range(published.host_port, last + 1):
        sock = socket.socket(family, kind)
        try:
            if kind == socket.SOCK_STREAM:
                # TCP only: rebinding a port whose connections are in TIME_WAIT.  On
                # UDP it would let another socket with the option (any local user's,
                # for a port above 1023) share the port and take its datagrams.
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                # An empty host IP is every address of both families; "::" given
                # explicitly is every IPv6 address only.
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY,
                                1 if published.host_ip else 0)
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


def _keepalive(sock: socket.socket | None) -> None:
    if sock is None:
        return
    with contextlib.suppress(OSError):  # already reset and closed: nothing to keep alive
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        for name, value in KEEPALIVE.items():
            sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, name), value)


class Forwarder:
    def __init__(self, sockets: SocketFactory | None = None,
                 limits: Limits | None = None) -> None:
        self.sockets = sockets or SocketFactory()
        self.limits = limits or Limits()
        self.loop = asyncio.new_event_loop()
        self._flows = _Flows(self.limits.per_process)
        self._process_full = _Throttled()
        self._endpoints: dict[str, _Endpoint] = {}
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self.loop.run_forever, name="publish",
                                        daemon=True)

    def start(self) -> None:
        """The forwarder's event loop and the thread that opens sockets in
        containers' namespaces (started by the daemon, kuryr/core/daemon.py)."""
        self.limits = fit_descriptor_budget(self.limits)
        self._flows.limit = self.limits.per_process
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

    def open_flows(self) -> int:
        """TCP connections and UDP peers open now (read without the loop: a gauge)."""
        return self._flows.open

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=30)

    # -- inside the loop -----------------------------------------------------------------
    async def _close(self, listener: _Listener) -> None:
        """Stop listening and end the listener's connections: their upstream
        sockets would otherwise keep the container's namespace alive after it."""
        listener.close()
        for relay in list(listener.relays):
            relay.cancel()

    async def _listen(self, published: Published, target: Target) -> _Listener:
        kind = socket.SOCK_STREAM if published.proto == "tcp" else socket.SOCK_DGRAM
        sock = _bind(published, kind)
        actual = replace(published, host_port=sock.getsockname()[1], host_port_end=0)
        listener = _Listener(actual, target)
        if kind == socket.SOCK_STREAM:
            sock.listen(128)
            server = await asyncio.start_server(
                lambda r, w: self._serve_tcp(listener, r, w), sock=sock)
            listener.close = server.close
            return listener
        transport, _ = await self.loop.create_datagram_endpoint(
            lambda: _UdpFront(self, listener), sock=sock)
        listener.close = transport.close
        return listener

    def take_flow(self, listener: _Listener, open_here: int) -> bool:
        """Room for one more flow on ``listener`` and in the process (logged when not)."""
        if open_here >= self.limits.per_port:
            listener.full.warn("published port %s: %d connections, the limit "
                               "([publish] max_connections_per_port): refusing more",
                               listener.published.label(), open_here)
            return False
        if not self._flows.take():
            self._process_full.warn("published ports: %d connections in all, the limit "
                                    "([publish] max_connections): refusing more",
                                    self._flows.open)
            return False
        return True

    def give_back_flow(self) -> None:
        self._flows.give_back()

    async def _serve_tcp(self, listener: _Listener, reader: asyncio.StreamReader,
                         writer: asyncio.StreamWriter) -> None:
        if not self.take_flow(listener, listener.active):
            writer.transport.abort()
            return
        relay = asyncio.current_task()
        assert relay is not None  # noqa: S101 - start_server runs this as a task
        listener.active += 1
        listener.relays.add(relay)
        up_writer: asyncio.StreamWriter | None = None
        graceful = False
        try:
            _keepalive(writer.get_extra_info("socket"))
            upstream = await self._connect_upstream(listener)
            if upstream is None:
                return
            try:
                up_reader, up_writer = await asyncio.open_connection(sock=upstream)
            except BaseException:
                upstream.close()
                raise
            failure = await _splice(reader, writer, up_reader, up_writer,
                                    self.limits.tcp_idle)
            if failure is not None:
                LOG.debug("%s: connection ended: %r", listener.published.label(), failure)
            graceful = failure is None
        except OSError as exc:  # the client went away while the upstream was made
            LOG.debug("%s: connection ended early: %r", listener.published.label(), exc)
        except asyncio.CancelledError:
            # The listener was closed (_close): ending here is the point, and a
            # cancelled task would only be logged as an error by asyncio's streams.
            pass
        finally:
            # Every ending closes both sockets: flushing what is queued after two
            # clean EOFs, at once (abort) after a reset, an error, the idle timeout
            # or the listener being closed.
            for side in (writer, up_writer):
                if side is None:
                    continue
                if graceful:
                    side.close()
                else:
                    side.transport.abort()
            listener.relays.discard(relay)
            listener.active -= 1
            self._flows.give_back()

    async def _connect_upstream(self, listener: _Listener) -> socket.socket | None:
        target, published = listener.target, listener.published
        family = socket.AF_INET6 if ":" in target.address else socket.AF_INET
        upstream: socket.socket | None = None
        try:
            upstream = await self.loop.run_in_executor(
                None, self.sockets.create, target.netns, family, socket.SOCK_STREAM)
            upstream.setblocking(False)
            # asyncio.timeout, not wait_for: Python 3.11's wait_for swallows a
            # cancellation that comes as the connect completes, and the relay of a
            # listener being closed would then go on (flaked once in CI).
            async with asyncio.timeout(CONNECT_TIMEOUT):
                await self.loop.sock_connect(upstream, (target.address,
                                                        published.container_port))
            _keepalive(upstream)
            return upstream
        except (TimeoutError, OSError) as exc:
            LOG.info("%s: cannot reach the container: %s", published.label(), exc)
            if upstream is not None:
                upstream.close()
            return None
        except BaseException:  # cancelled: the listener was closed meanwhile
            if upstream is not None:
                upstream.close()
            raise


class _IdleTimeout(Exception):
    """Neither direction carried data for the idle timeout."""


class _Idle:
    """When either direction of a connection last carried data."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self.last = time.monotonic()

    def touch(self) -> None:
        self.last = time.monotonic()

    def left(self) -> float:
        return self.last + self.timeout - time.monotonic()


async def _copy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                idle: _Idle) -> None:
    """One direction, until a clean EOF, which is passed on as a half-close (the
    other direction goes on: a client that shut down its sending side still
    gets the reply).  Errors and the idle timeout are raised."""
    while True:
        try:
            async with asyncio.timeout(max(idle.left(), 0)):  # not wait_for: see above
                data = await reader.read(RELAY_CHUNK)
        except TimeoutError:
            if idle.left() > 0:
                continue  # the other direction carried data meanwhile
            raise _IdleTimeout from None
        if not data:
            break
        idle.touch()
        writer.write(data)
        try:
            async with asyncio.timeout(max(idle.left(), 1)):
                await writer.drain()
        except TimeoutError:
            raise _IdleTimeout from None  # the receiver stopped reading
    if writer.can_write_eof():
        writer.write_eof()


async def _splice(client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter,
                  up_reader: asyncio.StreamReader, up_writer: asyncio.StreamWriter,
                  idle_timeout: float) -> BaseException | None:
    """Relay both directions until both ended with EOF (None) or one failed
    (its exception; the other direction is stopped at once)."""
    idle = _Idle(idle_timeout)
    copies = [asyncio.ensure_future(_copy(client_reader, up_writer, idle)),
              asyncio.ensure_future(_copy(up_reader, client_writer, idle))]
    try:
        await asyncio.wait(copies, return_when=asyncio.FIRST_EXCEPTION)
    finally:
        for copy in copies:
            copy.cancel()
        await asyncio.gather(*copies, return_exceptions=True)
    for copy in copies:
        if not copy.cancelled() and copy.exception() is not None:
            return copy.exception()
    return None


class _UdpPeer:
    """One client address of a UDP published port and its upstream socket in the
    container's namespace (made once, even when the first datagrams come back
    to back)."""

    def __init__(self) -> None:
        self.transport: asyncio.DatagramTransport | None = None
        self.pending: list[bytes] = []  # until the upstream socket exists
        self.last = time.monotonic()
        self.closed = False

    def send(self, data: bytes) -> None:
        self.last = time.monotonic()
        if self.transport is not None:
            self.transport.sendto(data)
        elif len(self.pending) < UDP_PENDING_MAX:
            self.pending.append(data)

    def close(self) -> None:
        self.closed = True
        self.pending.clear()
        if self.transport is not None:
            self.transport.close()


class _UdpBack(asyncio.DatagramProtocol):
    """The container's replies to one peer, sent back from the published port."""

    def __init__(self, front: _UdpFront, peer: _UdpPeer, addr: tuple) -> None:
        self.front, self.peer, self.addr = front, peer, addr

    def datagram_received(self, reply: bytes, _addr: tuple) -> None:
        self.peer.last = time.monotonic()
        if self.front.transport is not None:
            self.front.transport.sendto(reply, self.addr)


class _UdpFront(asyncio.DatagramProtocol):
    """A UDP published port: its peers, least recently active first, each forgotten
    after the idle timeout (a timer, not only when new traffic arrives), the
    least recently active one making room when the port is full."""

    def __init__(self, forwarder: Forwarder, listener: _Listener) -> None:
        self.forwarder = forwarder
        self.listener = listener
        self.transport: asyncio.DatagramTransport | None = None
        self.peers: OrderedDict[tuple, _UdpPeer] = OrderedDict()
        # The loop keeps only weak references to tasks: one still opening a socket
        # must not be garbage-collected halfway.
        self._opening: set[asyncio.Future[None]] = set()
        self._sweeper: asyncio.TimerHandle | None = None

    @property
    def _sweep_every(self) -> float:
        return min(self.forwarder.limits.udp_idle / 2, 5.0)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self._sweeper = self.forwarder.loop.call_later(self._sweep_every, self._sweep)

    def datagram_received(self, data: bytes, addr: tuple) -> None:
        peer = self.peers.get(addr)
        if peer is not None:
            self.peers.move_to_end(addr)
        else:
            peer = self._new_peer(addr)
            if peer is None:
                return  # dropped: full, and logged
        peer.send(data)

    def _new_peer(self, addr: tuple) -> _UdpPeer | None:
        if len(self.peers) >= self.forwarder.limits.per_port:
            self.listener.full.warn("published port %s: %d UDP peers, the limit ([publish] "
                                    "max_connections_per_port): forgetting the least "
                                    "recently active", self.listener.published.label(),
                                    len(self.peers))
            self._forget(next(iter(self.peers)))
        if not self.forwarder.take_flow(self.listener, len(self.peers)):
            if not self.peers:
                return None
            self._forget(next(iter(self.peers)))  # make room in the process's budget
            if not self.forwarder.take_flow(self.listener, len(self.peers)):
                return None
        peer = self.peers[addr] = _UdpPeer()
        task = asyncio.ensure_future(self._open_upstream(peer, addr))
        self._opening.add(task)
        task.add_done_callback(self._opening.discard)
        return peer

    async def _open_upstream(self, peer: _UdpPeer, addr: tuple) -> None:
        loop, target = self.forwarder.loop, self.listener.target
        family = socket.AF_INET6 if ":" in target.address else socket.AF_INET
        try:
            sock = await loop.run_in_executor(
                None, self.forwarder.sockets.create, target.netns, family, socket.SOCK_DGRAM)
        except OSError as exc:
            LOG.info("%s: cannot reach the container: %s", self.listener.published.label(),
                     exc)
            if self.peers.get(addr) is peer:
                self._forget(addr)
            return
        try:
            sock.setblocking(False)
            sock.connect((target.address, self.listener.published.container_port))
            transport, _ = await loop.create_datagram_endpoint(
                lambda: _UdpBack(self, peer, addr), sock=sock)
        except OSError:
            sock.close()
            if self.peers.get(addr) is peer:
                self._forget(addr)
            return
        if peer.closed:  # forgotten while its socket was being made
            transport.close()
            return
        peer.transport = transport
        for data in peer.pending:
            transport.sendto(data)
        peer.pending.clear()

    def _forget(self, addr: tuple) -> None:
        peer = self.peers.pop(addr, None)
        if peer is not None:
            peer.close()
            self.forwarder.give_back_flow()

    def _sweep(self) -> None:
        cutoff = time.monotonic() - self.forwarder.limits.udp_idle
        for addr in [a for a, p in self.peers.items() if p.last < cutoff]:
            self._forget(addr)
        self._sweeper = self.forwarder.loop.call_later(self._sweep_every, self._sweep)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
        for addr in list(self.peers):
            self._forget(addr)

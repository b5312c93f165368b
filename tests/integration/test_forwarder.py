"""The published-port forwarder's own functions, every ending forced: a client
or a container that resets, half-closes, goes idle or floods.  The "container"
is a namespace these tests create, its server on that namespace's loopback;
the forwarder listens on the host's loopback.  Every load is bounded (tens of
sockets, seconds).  Root is needed (setns), not the stack."""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from kuryr import errors
from kuryr.publish.forwarder import Forwarder, Limits, Target
from kuryr.publish.netns import SocketFactory
from kuryr.publish.spec import Published

from . import helpers

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (network namespaces)")


def open_fds() -> int:
    return len(list(Path("/proc/self/fd").iterdir()))


def fd_targets() -> dict[str, str]:
    """This process's descriptors and what each is (socket:[inode], a path...),
    to name the ones a failing count left."""
    found = {}
    for fd in Path("/proc/self/fd").iterdir():
        with contextlib.suppress(OSError):
            found[fd.name] = str(fd.readlink())
    return found


def new_fds(before: dict[str, str]) -> dict[str, str]:
    return {fd: what for fd, what in fd_targets().items() if before.get(fd) != what}


def settle(check: Callable[[], bool], timeout: float = 5) -> bool:
    return bool(helpers.wait_until(lambda: check() or None, timeout))


@pytest.fixture
def container(unique, cleanup) -> str:
    """A namespace with its loopback up: the container the forwarder reaches."""
    name = helpers.make_netns(f"fwd-{unique}", cleanup)
    subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
    return f"/run/netns/{name}"


@pytest.fixture
def make_forwarder() -> Iterator[Callable[..., Forwarder]]:
    made: list[Forwarder] = []

    def make(**limits: float) -> Forwarder:
        forwarder = Forwarder(limits=Limits(**limits))  # type: ignore[arg-type]
        forwarder.start()
        made.append(forwarder)
        return forwarder

    yield make
    for forwarder in made:
        forwarder.stop()


class TcpServer:
    """A TCP server inside the container namespace; ``handle`` runs per connection."""

    def __init__(self, netns: str, handle: Callable[[socket.socket], None]) -> None:
        factory = SocketFactory()
        factory.start()
        self.sock = factory.create(netns, socket.AF_INET, socket.SOCK_STREAM)
        factory.close()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.accepted: list[socket.socket] = []
        self.handle = handle
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            conn.settimeout(10)
            self.accepted.append(conn)
            threading.Thread(target=self.handle, args=(conn,), daemon=True).start()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()
        for conn in self.accepted:
            conn.close()


@pytest.fixture
def tcp_server(container) -> Iterator[Callable[[Callable[[socket.socket], None]], TcpServer]]:
    servers: list[TcpServer] = []

    def start(handle: Callable[[socket.socket], None]) -> TcpServer:
        servers.append(TcpServer(container, handle))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


def publish_tcp(forwarder: Forwarder, netns: str, port: int, endpoint: str = "ep1") -> int:
    (bound,) = forwarder.publish(endpoint, Target(netns, "127.0.0.1"),
                                 [Published("tcp", port, "127.0.0.1", 0)])
    return bound.host_port


def connect(port: int) -> socket.socket:
    client = socket.create_connection(("127.0.0.1", port), timeout=5)
    client.settimeout(5)
    return client


def reset(sock: socket.socket) -> None:
    """Close with an RST (SO_LINGER 0), as a crashed or impatient peer does."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def read_all(sock: socket.socket) -> bytes:
    data = b""
    with contextlib.suppress(ConnectionResetError):
        while chunk := sock.recv(4096):
            data += chunk
    return data


def shout_after_eof(conn: socket.socket) -> None:
    """Reads the whole request (until the client's half-close), then answers; closes
    its socket whatever happened (the tests count the process's descriptors)."""
    try:
        request = read_all(conn)
        with contextlib.suppress(OSError):  # reset: sendall raises even for b""
            conn.sendall(request.upper())
    finally:
        conn.close()


def test_client_half_close_still_gets_the_reply(make_forwarder, tcp_server, container):
    forwarder = make_forwarder()
    server = tcp_server(shout_after_eof)
    client = connect(publish_tcp(forwarder, container, server.port))
    client.sendall(b"request")
    client.shutdown(socket.SHUT_WR)
    assert read_all(client) == b"REQUEST"
    client.close()
    assert settle(lambda: forwarder.open_flows() == 0)


def test_client_reset_mid_request_closes_the_upstream(make_forwarder, tcp_server, container):
    upstream_ended = threading.Event()

    def wait_for_end(conn: socket.socket) -> None:
        read_all(conn)  # returns on EOF or reset
        upstream_ended.set()
        conn.close()

    forwarder = make_forwarder()
    server = tcp_server(wait_for_end)
    before = open_fds()
    port = publish_tcp(forwarder, container, server.port)
    for _ in range(20):
        upstream_ended.clear()
        client = connect(port)
        client.sendall(b"GET / HTT")  # half a request
        assert settle(lambda: forwarder.open_flows() == 1)
        reset(client)
        assert upstream_ended.wait(5), "the upstream stayed open after the client's reset"
    assert settle(lambda: forwarder.open_flows() == 0)
    forwarder.unpublish("ep1")
    assert settle(lambda: open_fds() <= before), (open_fds(), before)


def test_container_reset_closes_the_client(make_forwarder, tcp_server, container):
    forwarder = make_forwarder()
    server = tcp_server(lambda conn: (conn.recv(100), reset(conn)))
    client = connect(publish_tcp(forwarder, container, server.port))
    client.sendall(b"hello")
    started = time.monotonic()
    assert read_all(client) == b""
    assert time.monotonic() - started < 3
    client.close()
    assert settle(lambda: forwarder.open_flows() == 0)


def test_container_half_close_reaches_the_client_which_can_still_send(
        make_forwarder, tcp_server, container):
    received: list[bytes] = []

    def greet_then_listen(conn: socket.socket) -> None:
        conn.sendall(b"banner")
        conn.shutdown(socket.SHUT_WR)
        received.append(read_all(conn))
        conn.close()

    forwarder = make_forwarder()
    server = tcp_server(greet_then_listen)
    client = connect(publish_tcp(forwarder, container, server.port))
    assert read_all(client) == b"banner"  # the container's EOF arrived
    client.sendall(b"after")
    client.shutdown(socket.SHUT_WR)
    assert settle(lambda: received == [b"after"])
    client.close()
    assert settle(lambda: forwarder.open_flows() == 0)


def test_idle_connection_is_closed_on_both_sides(make_forwarder, tcp_server, container):
    upstream_ended = threading.Event()

    def silent(conn: socket.socket) -> None:
        read_all(conn)
        upstream_ended.set()

    forwarder = make_forwarder(tcp_idle=1.0)
    server = tcp_server(silent)
    client = connect(publish_tcp(forwarder, container, server.port))
    started = time.monotonic()
    assert read_all(client) == b""
    assert 0.9 < time.monotonic() - started < 4
    assert upstream_ended.wait(3)
    assert settle(lambda: forwarder.open_flows() == 0)


def keepalive_timers(filter_: str, netns: str | None = None) -> list[str]:
    """`ss` lines of established TCP sockets matching ``filter_`` with a keepalive timer."""
    ss = ["ss", "-Htno", "state", "established", filter_]
    if netns:
        ss = ["ip", "netns", "exec", Path(netns).name, *ss]
    lines = subprocess.run(ss, capture_output=True, text=True, check=True).stdout.splitlines()
    return [line for line in lines if "timer:(keepalive" in line]


def test_keepalive_is_on_both_sides(make_forwarder, tcp_server, container):
    forwarder = make_forwarder()
    server = tcp_server(shout_after_eof)
    port = publish_tcp(forwarder, container, server.port)
    client = connect(port)
    client.sendall(b"x")
    assert settle(lambda: forwarder.open_flows() == 1)
    assert len(keepalive_timers(f"sport = :{port}")) == 1, "host side without keepalive"
    assert len(keepalive_timers(f"dport = :{server.port}", container)) == 1, \
        "container side without keepalive"
    client.close()
    assert settle(lambda: forwarder.open_flows() == 0)


def test_connection_caps_per_port_and_per_process(make_forwarder, tcp_server, container,
                                                  caplog):
    caplog.set_level(logging.WARNING, "kuryr.publish.forwarder")
    forwarder = make_forwarder(per_port=3, per_process=4)
    server = tcp_server(shout_after_eof)
    first = publish_tcp(forwarder, container, server.port, "ep1")
    second = publish_tcp(forwarder, container, server.port, "ep2")
    held = [connect(first) for _ in range(3)]
    assert settle(lambda: forwarder.open_flows() == 3)
    refused = connect(first)
    assert read_all(refused) == b"", "a 4th connection to a port capped at 3 was served"
    assert "max_connections_per_port" in caplog.text
    held.append(connect(second))
    assert settle(lambda: forwarder.open_flows() == 4)
    refused_too = connect(second)
    assert read_all(refused_too) == b"", "a 5th connection in a process capped at 4"
    assert "[publish] max_connections)" in caplog.text
    for sock in [*held, refused, refused_too]:
        sock.close()
    assert settle(lambda: forwarder.open_flows() == 0)
    again = connect(first)  # room again
    again.sendall(b"x")
    assert settle(lambda: forwarder.open_flows() == 1)
    again.close()


def test_unpublish_ends_live_connections(make_forwarder, tcp_server, container):
    forwarder = make_forwarder()
    server = tcp_server(shout_after_eof)
    before, targets = open_fds(), fd_targets()
    clients = [connect(publish_tcp(forwarder, container, server.port)) for _ in range(1)]
    clients += [connect(clients[0].getpeername()[1]) for _ in range(4)]
    assert settle(lambda: forwarder.open_flows() == 5)
    forwarder.unpublish("ep1")
    for client in clients:
        assert read_all(client) == b""
        client.close()
    assert settle(lambda: forwarder.open_flows() == 0)
    # The test server's handlers close their side when the reset reaches them
    # (each may wait up to its 10 s socket timeout on a loaded machine: one
    # descriptor was still open after 5 s once in CI).
    assert settle(lambda: open_fds() <= before, timeout=12), \
        (open_fds(), before, new_fds(targets))


# -- UDP ------------------------------------------------------------------------------------

@pytest.fixture
def udp_echo(container) -> Iterator[tuple[int, list[tuple[str, int]]]]:
    """A UDP echo server in the container namespace; yields its port and the
    source addresses it saw (one per upstream socket of the forwarder)."""
    factory = SocketFactory()
    factory.start()
    sock = factory.create(container, socket.AF_INET, socket.SOCK_DGRAM)
    factory.close()
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(0.2)
    sources: list[tuple[str, int]] = []
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                data, addr = sock.recvfrom(2048)
            except TimeoutError:
                continue
            sources.append(addr)
            sock.sendto(data, addr)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield sock.getsockname()[1], sources
    stop.set()
    thread.join(5)
    sock.close()


def publish_udp(forwarder: Forwarder, netns: str, port: int, host_port: int = 0) -> int:
    (bound,) = forwarder.publish("udp1", Target(netns, "127.0.0.1"),
                                 [Published("udp", port, "127.0.0.1", host_port)])
    return bound.host_port


def udp_client() -> socket.socket:
    client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    client.settimeout(5)
    return client


def echoed_peers(port: int, count: int) -> list[socket.socket]:
    """``count`` new UDP peers of the published ``port``, each answered once."""
    clients = [udp_client() for _ in range(count)]
    for client in clients:
        client.sendto(b"hi", ("127.0.0.1", port))
        assert client.recv(100) == b"hi"
    return clients


def test_udp_back_to_back_datagrams_of_a_new_peer_share_one_upstream(
        make_forwarder, udp_echo, container):
    forwarder = make_forwarder()
    echo_port, sources = udp_echo
    before = open_fds()
    port = publish_udp(forwarder, container, echo_port)
    clients = [udp_client() for _ in range(50)]
    for client in clients:
        for n in range(5):
            client.sendto(b"%d" % n, ("127.0.0.1", port))
    for client in clients:
        replies = {client.recv(100) for _ in range(5)}
        assert replies == {b"0", b"1", b"2", b"3", b"4"}
    assert len(set(sources)) == 50, "more than one upstream socket per peer"
    assert forwarder.open_flows() == 50
    # 50 upstream sockets + the listener, nothing else
    assert open_fds() - before <= 50 + 1 + 50, (open_fds(), before)
    for client in clients:
        client.close()


def test_udp_peers_are_capped_least_recent_first(make_forwarder, udp_echo, container, caplog):
    caplog.set_level(logging.WARNING, "kuryr.publish.forwarder")
    forwarder = make_forwarder(per_port=10)
    echo_port, _ = udp_echo
    port = publish_udp(forwarder, container, echo_port)
    before = open_fds()
    clients = echoed_peers(port, 30)
    assert forwarder.open_flows() == 10
    assert "max_connections_per_port" in caplog.text
    assert open_fds() - before <= 30 + 10, (open_fds(), before)  # clients + upstreams
    # the most recent peers are kept: the last client is still served
    clients[-1].sendto(b"again", ("127.0.0.1", port))
    assert clients[-1].recv(100) == b"again"
    for client in clients:
        client.close()


def test_idle_udp_peers_expire_without_new_traffic(make_forwarder, udp_echo, container):
    forwarder = make_forwarder(udp_idle=1.0)
    echo_port, _ = udp_echo
    port = publish_udp(forwarder, container, echo_port)
    before = open_fds()
    clients = echoed_peers(port, 5)
    for client in clients:
        client.close()
    assert forwarder.open_flows() == 5
    assert settle(lambda: forwarder.open_flows() == 0, 4), "idle peers were kept"
    assert open_fds() <= before


def test_udp_host_port_cannot_be_shared(make_forwarder, udp_echo, container):
    forwarder = make_forwarder()
    echo_port, _ = udp_echo
    port = publish_udp(forwarder, container, echo_port)
    with pytest.raises(errors.Conflict, match="already in use"):
        forwarder.publish("udp2", Target(container, "127.0.0.1"),
                          [Published("udp", echo_port, "127.0.0.1", port)])
    # Not even with SO_REUSEADDR, the way another local process would try:
    intruder = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    intruder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    with pytest.raises(OSError, match="Address already in use") as caught:
        intruder.bind(("127.0.0.1", port))
    assert caught.value.errno == errno.EADDRINUSE
    intruder.close()
    # ... and as an unprivileged user
    probe = ("import socket,sys; s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM); "
             "s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1); "
             f"s.bind(('127.0.0.1',{port}))")
    proc = subprocess.run(["runuser", "-u", "nobody", "--", "python3", "-c", probe],
                          capture_output=True, text=True, check=False)
    assert proc.returncode != 0
    assert "Address already in use" in proc.stderr, proc.stderr


def test_listeners_bind_no_wider_than_asked(make_forwarder, container):
    forwarder = make_forwarder()
    bound = forwarder.publish("ep-wide", Target(container, "127.0.0.1"), [
        Published("tcp", 80, "127.0.0.1", 0), Published("tcp", 81, "::1", 0)])
    listening = {p.host_ip: p.host_port for p in bound}
    v4_only = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    # 127.0.0.1 took only the IPv4 loopback: the same port is free on ::1
    v4_only.bind(("::1", listening["127.0.0.1"]))
    v4_only.close()
    v6 = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    v6.bind(("127.0.0.1", listening["::1"]))  # and ::1 left 127.0.0.1 alone
    v6.close()

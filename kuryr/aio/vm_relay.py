"""The OpenStack APIs inside a simulated machine (a VM, a host), as on the
host: 127.0.0.1:PORT.

A real VM (or compute host) reaches Neutron (and Keystone) over its network;
the simulated machine's namespace has no route to the host.  This process
runs in the host's namespace, listens inside the machine's (its sockets are
made there and stay there), and relays each connection to the same port on
the host's loopback.

``python -m kuryr.aio.vm_relay MACHINE_NETNS --netns PATH --port 9696 [--port 5000]``
(MACHINE_NETNS, kuryr-vm-NAME or kuryr-host-NAME, names the machine)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import socket
import sys
from collections.abc import Sequence
from pathlib import Path

from kuryr.aio import namespaces
from kuryr.aio.layout import check_machine_netns, machine_label

MAX_CONNECTIONS = 256  # a misbehaving client in the VM cannot exhaust the host's sockets
CONNECT_TIMEOUT = 10.0
CHUNK = 65536
LOOPBACK = "127.0.0.1"


def listen_in(netns_path: str | Path, ports: Sequence[int],
              host: str = LOOPBACK) -> list[socket.socket]:
    """Listening sockets on host:port in that namespace, made before any thread
    starts (entering a namespace is per thread)."""
    listeners = []
    try:
        for port in ports:
            sock = namespaces.socket_in(netns_path)
            listeners.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
            sock.listen(128)
            sock.setblocking(False)
    except BaseException:
        for sock in listeners:
            sock.close()
        raise
    return listeners


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Copy until EOF; then half-close the other side (a client that shut down
    its sending side still gets its answer)."""
    while data := await reader.read(CHUNK):
        writer.write(data)
        await writer.drain()
    if writer.can_write_eof():
        writer.write_eof()


async def _close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()


async def relay(client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter,
                target: tuple[str, int]) -> None:
    """One connection: both directions until the server is done (its EOF) or
    either side fails; both ends are closed in every case."""
    try:
        async with asyncio.timeout(CONNECT_TIMEOUT):
            server_reader, server_writer = await asyncio.open_connection(*target)
    except (OSError, TimeoutError):
        await _close(client_writer)
        return
    upstream = asyncio.create_task(_pipe(client_reader, server_writer))
    downstream = asyncio.create_task(_pipe(server_reader, client_writer))
    try:
        await asyncio.wait((upstream, downstream), return_when=asyncio.FIRST_COMPLETED)
        if not downstream.done() and upstream.exception() is None:
            # The client has sent all it had (EOF): its answer still comes.
            await asyncio.wait((downstream,))
    finally:
        for task in (upstream, downstream):
            task.cancel()
        # Errors of either direction (a reset) just end the connection.
        await asyncio.gather(upstream, downstream, return_exceptions=True)
        await _close(server_writer)
        await _close(client_writer)


class Relay:
    """Accepts in the VM, connects on the host; at most ``limit`` at a time
    (more are closed at once)."""

    def __init__(self, target_host: str = LOOPBACK, limit: int = MAX_CONNECTIONS) -> None:
        self.target_host = target_host
        self.limit = limit
        self.active = 0

    async def handle(self, port: int, reader: asyncio.StreamReader,
                     writer: asyncio.StreamWriter) -> None:
        if self.active >= self.limit:
            await _close(writer)
            return
        self.active += 1
        try:
            await relay(reader, writer, (self.target_host, port))
        finally:
            self.active -= 1

    async def serve(self, listeners: Sequence[socket.socket]) -> None:
        servers = [await asyncio.start_server(
            functools.partial(self.handle, sock.getsockname()[1]), sock=sock)
            for sock in listeners]
        try:
            await asyncio.gather(*(server.serve_forever() for server in servers))
        finally:
            for server in servers:
                server.close()


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m kuryr.aio.vm_relay",
                                description="relay a simulated machine's 127.0.0.1:PORT to "
                                "the host's")
    p.add_argument("machine", type=check_machine_netns,
                   help="the machine's namespace name (kuryr-vm-NAME, kuryr-host-NAME)")
    p.add_argument("--netns", type=Path, required=True, help="the machine's network namespace")
    p.add_argument("--port", type=int, action="append", required=True)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    listeners = listen_in(args.netns, args.port)
    print(f"{machine_label(args.machine)}: relaying 127.0.0.1:{','.join(map(str, args.port))} "
          "to the host's", flush=True)
    asyncio.run(Relay().serve(listeners))
    return 0


if __name__ == "__main__":
    sys.exit(main())

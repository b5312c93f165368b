"""The VM's API relay, byte for byte on loopback sockets: it listens on
127.0.0.1:P (in the tests, this namespace's) and relays to TARGET:P, here
127.0.0.2:P (the host's 127.0.0.1:P in a VM)."""

import asyncio
import socket
import struct

import pytest

from kuryr.aio import vm_relay

TARGET = "127.0.0.2"
WAIT = 5


def _listener(port):
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen()
    sock.setblocking(False)
    return sock


async def _with_relay(handle_server, client, limit=vm_relay.MAX_CONNECTIONS):
    """Run ``client(port, relay)`` against a relay in front of a server whose
    connections ``handle_server`` serves; returns what ``client`` returns."""
    server = await asyncio.start_server(handle_server, TARGET, 0)
    port = server.sockets[0].getsockname()[1]
    relay = vm_relay.Relay(target_host=TARGET, limit=limit)
    serving = asyncio.create_task(relay.serve([_listener(port)]))
    try:
        async with asyncio.timeout(WAIT):
            return await client(port, relay)
    finally:
        serving.cancel()
        server.close()


async def _echo(reader, writer):
    while data := await reader.read(65536):
        writer.write(data)
        await writer.drain()
    writer.close()


def test_bytes_go_both_ways_and_a_half_closed_client_gets_its_answer():
    payload = bytes(range(256)) * 8192  # 2 MiB: more than one buffer each way

    async def client(port, relay):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(payload)
        await writer.drain()
        writer.write_eof()  # done sending; the answer still comes
        received = await reader.read()
        writer.close()
        return received

    assert asyncio.run(_with_relay(_echo, client)) == payload


def test_the_server_ending_closes_the_client():
    async def answer_and_close(reader, writer):
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
        writer.close()

    async def client(port, relay):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")  # never half-closes
        received = await reader.read()  # EOF: the relay closed it
        writer.close()
        return received

    assert asyncio.run(_with_relay(answer_and_close, client)).endswith(b"\r\n\r\nok")


def test_connections_beyond_the_cap_are_closed_at_once():
    release = asyncio.Event

    async def run():
        held = release()

        async def hold(reader, writer):
            await held.wait()
            writer.write(b"done")
            writer.close()

        async def client(port, relay):
            first = await asyncio.open_connection("127.0.0.1", port)
            await asyncio.sleep(0.2)  # the relay has taken it
            second = await asyncio.open_connection("127.0.0.1", port)
            refused = await second[0].read()
            held.set()
            answered = await first[0].read()
            while relay.active:  # its slot is given back once both ends are closed
                await asyncio.sleep(0.01)
            third = await asyncio.open_connection("127.0.0.1", port)
            after = await third[0].read()
            for _, writer in (first, second, third):
                writer.close()
            return refused, answered, after

        return await _with_relay(hold, client, limit=1)

    assert asyncio.run(run()) == (b"", b"done", b"done")


def test_a_client_reset_closes_the_server_side():
    async def run():
        ended = asyncio.Event()

        async def wait_for_end(reader, writer):
            while await reader.read(65536):
                pass
            ended.set()
            writer.close()

        async def client(port, relay):
            sock = socket.create_connection(("127.0.0.1", port))
            sock.sendall(b"partial request")
            await asyncio.sleep(0.2)
            # SO_LINGER 0: close() sends a reset, as a killed client does.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sock.close()
            await ended.wait()
            return True

        return await _with_relay(wait_for_end, client)

    assert asyncio.run(run())


def test_an_unreachable_target_closes_the_client():
    async def run():
        probe = socket.socket()
        probe.bind((TARGET, 0))
        port = probe.getsockname()[1]
        probe.close()  # nothing listens there now
        relay = vm_relay.Relay(target_host=TARGET)
        serving = asyncio.create_task(relay.serve([_listener(port)]))
        try:
            async with asyncio.timeout(WAIT):
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                received = await reader.read()
                writer.close()
                return received, relay.active
        finally:
            serving.cancel()

    assert asyncio.run(run()) == (b"", 0)


def test_listen_in_closes_what_it_made_on_failure(monkeypatch):
    made = []

    def fake_socket_in(netns_path):
        sock = socket.socket()
        made.append(sock)
        return sock

    monkeypatch.setattr(vm_relay.namespaces, "socket_in", fake_socket_in)
    taken = _listener(0)
    port = taken.getsockname()[1]
    try:
        with pytest.raises(OSError, match="in use"):
            vm_relay.listen_in("/nonexistent", [0, port])
    finally:
        taken.close()
    assert len(made) == 2
    assert all(sock.fileno() == -1 for sock in made)

"""Helpers for integration tests: namespaces, plugged ports, sockets in a netns."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

from pyroute2 import netns
from pyroute2.netns import create_socket

from kuryr.binding import netlink
from kuryr.binding.vif import VIF


def aio_command() -> str:
    """The kuryr-aio installed beside the running interpreter (the project's venv)."""
    return shutil.which("kuryr-aio") or str(Path(sys.executable).parent / "kuryr-aio")


def aio(*args: str, timeout: float = 600) -> str:
    """`kuryr-aio ARGS`, which must succeed; its standard output."""
    proc = subprocess.run([aio_command(), *args], capture_output=True, text=True,
                          timeout=timeout, check=False)
    assert proc.returncode == 0, f"kuryr-aio {' '.join(args)}: {proc.stderr.strip()}"
    return proc.stdout


def aio_env(*args: str) -> dict[str, str]:
    """The variables `kuryr-aio ARGS` exports (`vm env NAME`, `host env NAME`)."""
    import shlex

    env = {}
    for line in aio(*args).splitlines():
        if line.startswith("export "):
            key, _, value = line[len("export "):].partition("=")
            env[key] = shlex.split(value)[0] if value else ""
    return env


def wait_until(predicate, timeout: float, interval: float = 0.1):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            return value
        time.sleep(interval)


def delete_network(neutron, network_id: str) -> None:
    for port in neutron.api.ports(network_id=network_id):
        neutron.api.delete_port(port.id, ignore_missing=True)
    neutron.api.delete_network(network_id, ignore_missing=True)


def make_netns(name: str, cleanup) -> str:
    netns.create(name)
    cleanup(lambda: netns.remove(name) if name in netns.listnetns() else None)
    return name


def plug_port_into_netns(neutron, ovs, port, ns: str, cleanup, mtu: int | None = None) -> VIF:
    """Wire a Neutron port the way Kuryr does: veth, host end into br-int, other end in ns."""
    vif = VIF(port_id=port.id, mac=port.mac_address, mtu=mtu)
    netlink.create_veth(vif)
    cleanup(lambda: netlink.delete_link(vif.host_ifname))
    netlink.send_full_checksums(vif.container_ifname)  # as Kuryr's binder on the netdev datapath
    ovs.plug(vif)
    cleanup(lambda: ovs.unplug(vif.host_ifname))
    subnet_prefix = {}
    for fixed in port.fixed_ips:
        subnet = neutron.api.get_subnet(fixed["subnet_id"])
        subnet_prefix[fixed["ip_address"]] = subnet.cidr.split("/")[1]
    addresses = [f"{ip}/{prefix}" for ip, prefix in subnet_prefix.items()]
    netlink.move_into_netns(vif.container_ifname, ns, "eth0", addresses)
    return vif


def ping(ns: str, address: str, count: int = 1, wait: int = 2) -> bool:
    proc = subprocess.run(
        ["ip", "netns", "exec", ns, "busybox", "ping", "-c", str(count), "-W", str(wait),
         address], capture_output=True, text=True, check=False)
    return proc.returncode == 0


def tcp_listen(ns: str, port: int) -> socket.socket:
    sock = create_socket(ns, socket.AF_INET, socket.SOCK_STREAM, flags=0)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("0.0.0.0", port))
    sock.listen(8)
    return sock


def tcp_exchange(ns: str, server: socket.socket, address: str, port: int,
                 timeout: float = 3.0) -> bytes | None:
    """Connect from ``ns`` to ``address:port`` and send a payload; return what the
    server received, or None when the connection did not go through."""
    client = create_socket(ns, socket.AF_INET, socket.SOCK_STREAM, flags=0)
    client.settimeout(timeout)
    server.settimeout(timeout)
    payload = os.urandom(16).hex().encode()
    try:
        client.connect((address, port))
        client.sendall(payload)
        conn, _ = server.accept()
        with conn:
            conn.settimeout(timeout)
            data = conn.recv(64)
            conn.sendall(data[::-1])
        back = client.recv(64)
        assert back == payload[::-1]
        return data
    except (TimeoutError, ConnectionError, OSError):
        return None
    finally:
        client.close()


DOCKER_CLI = "/usr/bin/docker"


class Docker:
    """The docker CLI against the stack's dockerd."""

    def __init__(self, host: str) -> None:
        self.host = host

    def run(self, *args: str, check: bool = True, timeout: float = 120):
        proc = subprocess.run([DOCKER_CLI, "-H", self.host, *args], capture_output=True,
                              text=True, timeout=timeout, check=False)
        if check and proc.returncode != 0:
            raise AssertionError(f"docker {' '.join(args)} failed: {proc.stderr.strip()}")
        return proc

    def out(self, *args: str) -> str:
        return self.run(*args).stdout.strip()

    def ip_of(self, container: str, network: str, v6: bool = False) -> str:
        field = "GlobalIPv6Address" if v6 else "IPAddress"
        return self.out("inspect", "-f",
                        f'{{{{(index .NetworkSettings.Networks "{network}").{field}}}}}',
                        container)

    def network_id(self, name: str) -> str:
        return self.out("network", "inspect", "-f", "{{.Id}}", name)


def container_starter(cleanup, prefix: str, network: str):
    """docker run -d on any dockerd (the host's, a VM's, a simulated host's) on
    ``network`` unless told otherwise; each container removed at teardown."""
    counter = iter(range(1000))

    def run(where: Docker, *args: str, net: str = network, cmd=("sleep", "600")) -> str:
        name = f"{prefix}-{next(counter)}"
        where.run("run", "-d", "--name", name, "--net", net, *args, "busybox", *cmd)
        cleanup(lambda: where.run("rm", "-f", name, check=False))
        return name

    return run


def pings(where: Docker, container: str, address: str) -> bool:
    """One ping from a container (2 s)."""
    return where.run("exec", container, "ping", "-c", "1", "-W", "2", address,
                     check=False).returncode == 0


def kuryr_leftovers(neutron, ovs) -> dict:
    """Everything Kuryr leaves behind for containers: ports, OVS ports, veths."""
    from pyroute2 import IPRoute

    from kuryr.neutron import marks

    ports = [p.id for p in neutron.api.ports()
             if p.device_owner in (marks.DEVICE_OWNER, marks.UNBOUND_DEVICE_OWNER)]
    with IPRoute() as ipr:
        links = [link.get_attr("IFLA_IFNAME") for link in ipr.get_links()]
    veths = [n for n in links if (n.startswith(("tap", "tc")) and len(n) == len("tap") + 11)
             or (n.startswith("tc") and len(n) == 13)]
    return {"neutron_ports": sorted(ports), "ovs_ports": sorted(ovs.managed_ports("br-int")),
            "veths": sorted(veths)}


def tcp_connects(ns: str, address: str, port: int, timeout: float = 2.0) -> bool:
    """Whether a TCP connection from ``ns`` to ``address:port`` is accepted."""
    sock = create_socket(ns, socket.AF_INET, socket.SOCK_STREAM, flags=0)
    sock.settimeout(timeout)
    try:
        sock.connect((address, port))
        return True
    except OSError:
        return False
    finally:
        sock.close()


def restart_kuryr(stack):
    import signal

    from kuryr.aio.plugin import PLUGIN_SOCKET

    pidfile = stack.pidfile("kuryr")
    os.kill(int(pidfile.read_text()), signal.SIGTERM)
    assert wait_until(lambda: not PLUGIN_SOCKET.exists() or not _answers(), 15)
    proc = subprocess.run([aio_command(), "up"], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr


def _answers():
    from kuryr.aio.plugin import plugin_answers

    try:
        return plugin_answers()
    except OSError:
        return False


def restart_dockerd(stack) -> None:
    import signal

    pid = int(stack.pidfile("dockerd").read_text())
    os.kill(pid, signal.SIGTERM)
    assert wait_until(lambda: not Path(f"/proc/{pid}").exists(), 60)
    proc = subprocess.run([aio_command(), "up"], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def remove_network(docker, stack, name: str) -> None:
    """`docker network rm` at a test's end; a failure is the test's failure, except
    Docker's own stale endpoint count (moby/moby#42119: after many concurrent
    container removals dockerd can keep counting an endpoint that no longer
    exists, refuses the rm with "has active endpoints", and repairs the count
    when it restarts: "Fixing inconsistent endpoint_cnt")."""
    proc = docker.run("network", "rm", name, check=False)
    if proc.returncode == 0 or "not found" in proc.stderr or "No such network" in proc.stderr:
        return
    attached = docker.run("network", "inspect", "-f", "{{len .Containers}}", name,
                          check=False).stdout.strip()
    if "has active endpoints" in proc.stderr and attached == "0":
        print(f"dockerd counts a gone endpoint on {name} (moby/moby#42119): restarting it")
        restart_dockerd(stack)
        proc = docker.run("network", "rm", name, check=False)
    assert proc.returncode == 0, f"docker network rm {name}: {proc.stderr.strip()}"


def resolve_a(ns: str, server: str, name: str, timeout: float = 2.0) -> list[str]:
    """The A records of ``name`` as ``server`` answers them to a query sent from
    ``ns`` (one UDP datagram to port 53; [] for no answer or NXDOMAIN)."""
    import secrets
    import struct

    query_id = secrets.randbits(16)
    question = b"".join(bytes([len(label)]) + label.encode() for label in name.split("."))
    packet = struct.pack("!HHHHHH", query_id, 0x0100, 1, 0, 0, 0) + question + b"\0" \
        + struct.pack("!HH", 1, 1)
    sock = create_socket(ns, socket.AF_INET, socket.SOCK_DGRAM, flags=0)
    sock.settimeout(timeout)
    try:
        sock.sendto(packet, (server, 53))
        data = sock.recv(1500)
    except OSError:
        return []
    finally:
        sock.close()
    got_id, _flags, questions, answers, _, _ = struct.unpack("!HHHHHH", data[:12])
    if got_id != query_id:
        return []
    offset = 12
    for _ in range(questions):
        offset = _skip_name(data, offset) + 4
    found = []
    for _ in range(answers):
        offset = _skip_name(data, offset)
        rtype, _cls, _ttl, length = struct.unpack("!HHIH", data[offset:offset + 10])
        offset += 10
        if rtype == 1 and length == 4:  # type A: an IPv4 address
            found.append(socket.inet_ntoa(data[offset:offset + 4]))
        offset += length
    return found


def _skip_name(data: bytes, offset: int) -> int:
    while data[offset]:
        if data[offset] & 0xC0 == 0xC0:  # a compression pointer ends the name
            return offset + 2
        offset += data[offset] + 1
    return offset + 1


def stack_kuryr_conf_with(stack, path: Path, overrides: dict[tuple[str, str], str]) -> Path:
    """The stack's kuryr.conf with ``{(section, option): value}`` changed, written
    root-only to ``path`` (for a second `kuryr serve` a test starts itself)."""
    import configparser

    conf = configparser.RawConfigParser()
    conf.optionxform = str  # type: ignore[assignment,method-assign]
    conf.read(stack.kuryr_conf)
    for (section, option), value in overrides.items():
        if section != "DEFAULT" and not conf.has_section(section):
            conf.add_section(section)
        conf.set(section, option, value)
    with path.open("w") as out:
        conf.write(out)
    path.chmod(0o600)
    return path


@contextlib.contextmanager
def stack_kuryr_with(stack, tmp_path: Path, overrides: dict[tuple[str, str], str]):
    """The stack's Kuryr, restarted with ``overrides`` to its kuryr.conf on the same
    plugin socket (dockerd notices nothing); the stack's own again afterwards."""
    import signal

    from kuryr.aio.plugin import PLUGIN_SOCKET

    pid = int(stack.pidfile("kuryr").read_text())
    os.kill(pid, signal.SIGTERM)
    assert wait_until(lambda: not Path(f"/proc/{pid}").exists(), 30)
    conf = stack_kuryr_conf_with(stack, tmp_path / "kuryr.conf", overrides)
    log = tmp_path / "kuryr.log"
    with log.open("w") as out:
        proc = subprocess.Popen([str(Path(sys.executable).parent / "kuryr"), "serve",
                                 "--config-file", str(conf)],
                                stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_until(lambda: (PLUGIN_SOCKET.exists() and _answers()) or proc.poll() is not None,
                   60)
        assert proc.poll() is None, log.read_text()[-2000:]
        assert _answers(), log.read_text()[-2000:]
        yield proc
    finally:
        proc.terminate()
        proc.wait(30)
        up = subprocess.run([aio_command(), "up"], capture_output=True, text=True, check=False)
        assert up.returncode == 0, up.stderr


def outsider_namespace(neutron, ovs, host: str, network_id: str, cleanup, unique: str) -> str:
    """A namespace on ``network_id`` through a Neutron port bound to ``host`` in a
    security group of its own: a client outside any container's groups."""
    group = neutron.create_security_group(f"outsider-{unique}")
    cleanup(lambda: neutron.delete_security_group(group.id))
    client = neutron.api.create_port(network_id=network_id, binding_host_id=host,
                                     device_owner="compute:kuryr-test",
                                     security_group_ids=[group.id])
    cleanup(lambda: neutron.delete_port(client.id))
    ns = make_netns(f"out-{unique}", cleanup)
    vif = plug_port_into_netns(neutron, ovs, client, ns, cleanup)
    assert ovs.wait_installed(vif.host_ifname, 15), f"client port {client.id} not installed"
    return ns

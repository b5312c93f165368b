"""Published (-p, -P) and exposed (--expose) ports on Neutron, through the real
dockerd, neutron-server and OVN.  Traffic goes only to loopback and to
namespaces these tests create."""

from __future__ import annotations

import socket
import struct
import subprocess
import threading
import time
import urllib.request
from pathlib import Path

import pytest
from pyroute2.netns import create_socket

from kuryr.aio.layout import OUTSIDE_NETNS
from kuryr.binding.vif import VIF
from kuryr.neutron import marks
from kuryr.publish import spec
from kuryr.publish.netns import SocketFactory

from . import helpers

HTTPD = ("sh", "-c", ("mkdir -p /www && echo hello-$HOSTNAME > /www/index.html && "
                      "for p in $PORTS; do httpd -p $p -h /www; done; exec sleep 600"))


def fetch(port: int, host: str = "127.0.0.1", timeout: float = 5) -> str | None:
    try:
        with urllib.request.urlopen(f"http://{host}:{port}/", timeout=timeout) as resp:
            return resp.read().decode().strip()
    except OSError:
        return None


def web(run_container, network, *args, ports="80"):
    return run_container(network, "-e", f"PORTS={ports}", *args, cmd=HTTPD)


def expose_groups(neutron):
    return [g.name for g in neutron.api.security_groups()
            if g.name.startswith("kuryr-expose-")]


@pytest.fixture
def net(make_network):
    return make_network("--subnet", "10.80.0.0/24")


@pytest.mark.usefixtures("no_leaks")
def test_published_tcp_port_reaches_the_container(docker, net, run_container, neutron):
    container = web(run_container, net, "-p", "127.0.0.1:18180:80")
    hostname = docker.out("inspect", "-f", "{{.Config.Hostname}}", container)
    assert helpers.wait_until(lambda: fetch(18180), 10) == f"hello-{hostname}"
    docker.run("rm", "-f", container)
    assert fetch(18180, timeout=1) is None, "the host port still answers after the container"
    assert helpers.wait_until(lambda: expose_groups(neutron) == [], 10), expose_groups(neutron)


@pytest.mark.usefixtures("no_leaks")
def test_published_udp_port_echoes(docker, net, run_container):
    container = run_container(net, "-p", "127.0.0.1:18181:5353/udp")
    sandbox = docker.out("inspect", "-f", "{{.NetworkSettings.SandboxKey}}", container)
    # busybox-static has no UDP server: open one inside the container's namespace.
    factory = SocketFactory()
    factory.start()
    server = factory.create(sandbox, socket.AF_INET, socket.SOCK_DGRAM)
    server.bind(("0.0.0.0", 5353))
    server.settimeout(10)

    def echo():
        data, addr = server.recvfrom(100)
        server.sendto(data.upper(), addr)

    thread = threading.Thread(target=echo)
    thread.start()
    client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    client.settimeout(5)
    client.sendto(b"kuryr-udp", ("127.0.0.1", 18181))
    assert client.recvfrom(100)[0] == b"KURYR-UDP"
    thread.join()
    server.close()
    factory.close()


def test_port_range(docker, net, run_container):
    web(run_container, net, "-p", "127.0.0.1:18182-18183:80-81", ports="80 81")
    assert helpers.wait_until(lambda: fetch(18182), 10)
    assert fetch(18183)


def test_publish_all_picks_host_ports_and_reports_them(stack, docker, net, run_container,
                                                       neutron):
    container = web(run_container, net, "--expose", "80", "-P")
    ip = docker.ip_of(container, net)
    (port,) = neutron.api.ports(fixed_ips=[f"ip_address={ip}"])
    _, published = spec.decode(port.description)
    assert [(p.proto, p.container_port) for p in published] == [("tcp", 80)]
    assert published[0].host_port > 0
    assert helpers.wait_until(lambda: fetch(published[0].host_port), 10)
    listing = subprocess.run([helpers.aio_command().replace("kuryr-aio", "kuryr"), "ports",
                              "--config-file", str(stack.kuryr_conf)],
                             capture_output=True, text=True, check=True).stdout
    assert f"{ip}" in listing
    assert f":{published[0].host_port}->80/tcp" in listing


@pytest.mark.usefixtures("no_leaks")
def test_busy_host_port_is_a_clear_error(docker, net, unique, neutron):
    blocker = socket.socket()
    blocker.bind(("127.0.0.1", 18184))
    blocker.listen(1)
    try:
        proc = docker.run("run", "--rm", "--name", f"busy-{unique}", "--net", net,
                          "-p", "127.0.0.1:18184:80", "busybox", "true", check=False)
    finally:
        blocker.close()
    assert proc.returncode != 0
    assert "18184" in proc.stderr, proc.stderr
    assert "already in use" in proc.stderr, proc.stderr
    assert helpers.wait_until(lambda: expose_groups(neutron) == [], 10), expose_groups(neutron)


def test_exposed_port_open_and_others_closed(neutron, ovs, stack, docker, net, run_container,
                                             cleanup, unique):
    container = web(run_container, net, "--expose", "9999", ports="9999 8888")
    ip = docker.ip_of(container, net)
    (port,) = neutron.api.ports(fixed_ips=[f"ip_address={ip}"])
    assert any(g.startswith("kuryr-expose-") for g in expose_groups(neutron))
    assert len(port.security_group_ids) == 2
    net_id = neutron.networks_tagged(marks.network_tags(docker.network_id(net)))[0].id
    ns = helpers.outsider_namespace(neutron, ovs, stack.host, net_id, cleanup, unique)
    assert helpers.wait_until(lambda: helpers.tcp_connects(ns, ip, 9999), 10), \
        "exposed port 9999 refused a client outside the container's groups"
    assert not helpers.tcp_connects(ns, ip, 8888), "port 8888 was reachable without --expose"


def test_published_port_survives_kuryr_restart(stack, docker, net, run_container, neutron):
    container = web(run_container, net, "-p", "127.0.0.1:18185:80")
    assert helpers.wait_until(lambda: fetch(18185), 10)
    helpers.restart_kuryr(stack)
    assert helpers.wait_until(lambda: fetch(18185), 10), "not served again after a restart"
    docker.run("rm", "-f", container)
    assert helpers.wait_until(lambda: fetch(18185, timeout=1) is None, 5)
    assert helpers.wait_until(lambda: expose_groups(neutron) == [], 5)


def http_get_from_namespace(ns: str, address: str, port: int) -> str | None:
    sock = create_socket(ns, socket.AF_INET, socket.SOCK_STREAM, flags=0)
    sock.settimeout(5)
    try:
        sock.connect((address, port))
        sock.sendall(b"GET / HTTP/1.0\r\n\r\n")
        data = b""
        while chunk := sock.recv(4096):
            data += chunk
        return data.decode(errors="replace").split("\r\n\r\n", 1)[-1].strip()
    except OSError:
        return None
    finally:
        sock.close()


def forwarded_ports(neutron, port_id: str) -> list[tuple[int, int]]:
    fips = [f for f in neutron.api.ips() if (f.description or "").startswith(
        "kuryr-publish:")]
    assert len(fips) == 1
    return sorted((f.external_port, f.internal_port)
                  for f in neutron.api.port_forwardings(fips[0].id, internal_port_id=port_id))


def listening_addresses(port: int) -> list[str]:
    """Local addresses of the host's TCP listeners on ``port`` (as `ss` prints them)."""
    out = subprocess.run(["ss", "-Htln", f"sport = :{port}"], capture_output=True, text=True,
                         check=True).stdout
    return sorted(line.split()[3].rsplit(":", 1)[0] for line in out.splitlines())


@pytest.mark.usefixtures("no_leaks")
def test_floating_ip_port_forwarding_from_outside(docker, net, run_container, neutron):
    """kuryr-aio enables [publish] floating_ip_network = public: the outside
    namespace on br-ex reaches the container through FIP:HostPort, for a port
    published on every address only; one bound to 127.0.0.1 stays on the host."""
    container = web(run_container, net, "-p", "18186:80", "-p", "127.0.0.1:18931:81",
                    ports="80 81")
    ip = docker.ip_of(container, net)
    (port,) = neutron.api.ports(fixed_ips=[f"ip_address={ip}"])
    assert forwarded_ports(neutron, port.id) == [(18186, 80)]
    fips = [f for f in neutron.api.ips() if (f.description or "").startswith(
        "kuryr-publish:")]
    hostname = docker.out("inspect", "-f", "{{.Config.Hostname}}", container)
    got = helpers.wait_until(lambda: http_get_from_namespace(
        OUTSIDE_NETNS, fips[0].floating_ip_address, 18186), 15)
    assert got == f"hello-{hostname}"
    assert http_get_from_namespace(OUTSIDE_NETNS, fips[0].floating_ip_address, 18931) is None
    assert fetch(18931) == f"hello-{hostname}"  # on the host's loopback, as asked
    docker.run("rm", "-f", container)
    assert neutron.port_forwardings(fips[0].id, internal_port_id=port.id) == []


def test_default_host_ip_keeps_ports_without_an_address_on_it(stack, docker, net, neutron,
                                                              run_container, tmp_path):
    with helpers.stack_kuryr_with(stack, tmp_path, {
            ("publish", "default_host_ip"): "127.0.0.1"}):
        container = web(run_container, net, "-p", "18932:80")
        assert helpers.wait_until(lambda: fetch(18932), 10)
        assert listening_addresses(18932) == ["127.0.0.1"]
        ip = docker.ip_of(container, net)
        (port,) = neutron.api.ports(fixed_ips=[f"ip_address={ip}"])
        assert forwarded_ports(neutron, port.id) == [], "a loopback port on the floating IP"
        docker.run("rm", "-f", container)


def test_restart_serves_what_kuryr_recorded_not_what_the_description_says(
        stack, docker, net, run_container, neutron, ovs):
    container = web(run_container, net, "-p", "127.0.0.1:18187:80")
    assert helpers.wait_until(lambda: fetch(18187), 10)
    ip = docker.ip_of(container, net)
    (port,) = neutron.api.ports(fixed_ips=[f"ip_address={ip}"])
    record = ovs.interface_external_ids(VIF(port_id=port.id, mac="").host_ifname)
    sandbox = docker.out("inspect", "-f", "{{.NetworkSettings.SandboxKey}}", container)
    assert record["kuryr-netns"] == sandbox
    # The port's owner edits its description to ask for host port 18935 on every address.
    group, published = spec.decode(port.description)
    forged = [*published, spec.Published("tcp", 80, "0.0.0.0", 18935)]
    neutron.api.update_port(port.id, description=spec.encode(forged, group))
    helpers.restart_kuryr(stack)
    assert helpers.wait_until(lambda: fetch(18187), 10), "not served again after a restart"
    assert listening_addresses(18935) == [], "Kuryr bound a port only the description named"
    docker.run("rm", "-f", container)
    assert helpers.wait_until(lambda: fetch(18187, timeout=1) is None, 5)


def kuryr_descriptors(stack) -> int:
    pid = int(stack.pidfile("kuryr").read_text())
    return len(list(Path(f"/proc/{pid}/fd").iterdir()))


def test_published_ports_cost_bounded_descriptors_and_give_them_back(
        stack, docker, net, run_container, capsys):
    """The forwarder shares the plugin's process: 60 TCP clients (held, then half
    of them reset mid-request) and 50 UDP peers x 5 back-to-back datagrams take
    2 and 1 descriptors each while open, and every one is given back."""
    web(run_container, net, "-p", "127.0.0.1:18188:80", "-p", "127.0.0.1:18189:5353/udp")
    assert helpers.wait_until(lambda: fetch(18188), 10)
    # Kuryr's own descriptors move a little (Neutron connections of the pool's
    # refill, OVSDB): the lowest of a few samples, and some slack.
    slack = 10
    samples = []
    for _ in range(5):
        samples.append(kuryr_descriptors(stack))
        time.sleep(0.2)
    baseline = min(samples)
    clients = [socket.create_connection(("127.0.0.1", 18188), timeout=5) for _ in range(60)]
    for client in clients:
        client.sendall(b"GET / HTTP/1.0\r\n")  # never finished
    assert helpers.wait_until(lambda: kuryr_descriptors(stack) >= baseline + 110, 10), \
        (kuryr_descriptors(stack), baseline)
    held = kuryr_descriptors(stack)
    assert held <= baseline + 120 + slack, (held, baseline)
    for n, client in enumerate(clients):
        if n % 2:
            client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        client.close()
    assert helpers.wait_until(lambda: kuryr_descriptors(stack) <= baseline + slack, 10), \
        (kuryr_descriptors(stack), baseline)
    peers = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(50)]
    for peer in peers:
        for n in range(5):
            peer.sendto(b"%d" % n, ("127.0.0.1", 18189))  # nobody answers inside
    time.sleep(1)
    udp = kuryr_descriptors(stack)
    for peer in peers:
        peer.close()
    assert udp - baseline <= 50 + slack, (udp, baseline)
    with capsys.disabled():
        print(f"\nKuryr descriptors: {baseline} idle, {held} with 60 TCP clients "
              f"(+{held - baseline}), {udp} with 50 UDP peers (+{udp - baseline})")

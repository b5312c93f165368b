"""Kuryr on several hosts of one Neutron/OVN, on the real stack: simulated hosts
of `kuryr-aio host up` (each a network and mount namespace with its own Open
vSwitch, its own ovn-controller registered as a chassis, its own dockerd and
Kuryr; Geneve between them over a veth underlay with no uplink) beside the
main host.

The two simulated hosts' names share a prefix longer than a Neutron tag (60
characters): a host tag cut to fit would be the same for both, and each
host's garbage collector would take the other's networks for its own.

Containers of the three hosts share one Neutron network (adopted by each
dockerd with -o neutron.net.uuid).  Traffic stays between namespaces of this
machine."""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from kuryr.neutron import marks

from . import helpers
from .conftest import KURYR
from .test_ports import HTTPD, OUTSIDE_NETNS, http_get_from_namespace

LONG_PREFIX = "kuryr-aio-test-compute-node-in-one-rack-with-a-long-name-"
HOSTS = {"ha": LONG_PREFIX + "a", "hb": LONG_PREFIX + "b"}
SHARED = "mh"  # the Docker network on the shared Neutron network, on every host
SHARED_CIDR, SHARED_GATEWAY = "10.77.0.0/24", "10.77.0.1"
ROUNDS, PER_ROUND, REMOVED = 3, 4, 2  # churn: bounded bursts on both hosts at once


class SimHost:
    """A simulated host, as its `kuryr-aio host env` describes it."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.env = helpers.aio_env("host", "env", name)
        self.hostname = self.env["KURYR_HOST_NAME"]
        self.docker = helpers.Docker(self.env["DOCKER_HOST"])
        self.netns = self.env["KURYR_HOST_NETNS"]

    def run(self, *argv: str, timeout: float = 120) -> subprocess.CompletedProcess:
        """A command inside the host's namespaces."""
        return subprocess.run([*shlex.split(self.env["KURYR_HOST_EXEC"]), *argv],
                              capture_output=True, text=True, timeout=timeout, check=False)

    def kuryr(self, *args: str) -> subprocess.CompletedProcess:
        return self.run(sys.executable, "-m", "kuryr.cli", *args,
                        "--config-file", self.env["KURYR_HOST_KURYR_CONF"])

    def collect_garbage(self) -> str:
        """`kuryr gc --grace 0 --trust-docker` on this host, as an operator would."""
        done = self.kuryr("gc", "--grace", "0", "--trust-docker")
        assert done.returncode == 0, done.stderr
        return done.stdout + done.stderr

    def kill_9(self, what: str) -> None:
        pid = int(Path(self.env[f"KURYR_HOST_{what}_PIDFILE"]).read_text().split()[0])
        os.kill(pid, signal.SIGKILL)

    def links(self) -> set[str]:
        listed = self.run("ip", "-o", "link", "show")
        assert listed.returncode == 0, listed.stderr
        return {line.split(":")[1].strip().split("@")[0] for line in listed.stdout.splitlines()}


@pytest.fixture(scope="module")
def hosts(stack):
    for name, hostname in HOSTS.items():
        helpers.aio("host", "up", name, "--hostname", hostname)
    made = {name: SimHost(name) for name in HOSTS}
    yield made
    for name in HOSTS:
        helpers.aio("host", "down", name, "--purge")


@pytest.fixture(scope="module")
def shared(hosts, stack, neutron):
    """One Neutron network, adopted as Docker network `mh` by the main host's
    dockerd and both simulated hosts'; its Neutron id."""
    net = neutron.api.create_network(name="kuryr-test-multihost")
    neutron.api.create_subnet(network_id=net.id, ip_version=4, cidr=SHARED_CIDR,
                              gateway_ip=SHARED_GATEWAY)
    dockers = [helpers.Docker(stack.docker_host), *(h.docker for h in hosts.values())]
    for docker in dockers:
        remove_docker_network(docker, SHARED)  # left by an interrupted run
        docker.run("network", "create", *KURYR, "--subnet", SHARED_CIDR,
                   "--gateway", SHARED_GATEWAY, "-o", f"neutron.net.uuid={net.id}", SHARED)
    yield net.id
    for docker in dockers:
        remove_docker_network(docker, SHARED)
    helpers.delete_network(neutron, net.id)


def remove_docker_network(docker: helpers.Docker, name: str) -> None:
    """Best effort: a purged host's dockerd is gone with its networks."""
    listed = docker.run("ps", "-aq", "--filter", f"network={name}", check=False)
    for cid in listed.stdout.split():
        docker.run("rm", "-f", cid, check=False)
    docker.run("network", "rm", name, check=False)


@pytest.fixture
def start(cleanup, unique):
    return helpers.container_starter(cleanup, f"mh-{unique}", SHARED)


pings = helpers.pings


def http_get(where: helpers.Docker, container: str, address: str, port: int = 80) -> str:
    """TCP from a container's network namespace (busybox wget crashes here).
    Through its process: a simulated host's dockerd mounts its containers'
    namespaces in the host's own mount namespace."""
    pid = where.out("inspect", "-f", "{{.State.Pid}}", container)
    return http_get_from_namespace(f"/proc/{pid}/ns/net", address, port) or ""


def port_of(neutron, address: str, network_id: str):
    (port,) = neutron.ports(network_id=network_id, ip_address=address)
    return port


def binding_host(neutron, port_id: str) -> str:
    return neutron.api.get_port(port_id).binding_host_id


# -- connectivity across hosts --------------------------------------------------------------

def test_containers_on_different_hosts_talk_through_geneve(hosts, shared, docker, neutron,
                                                           start):
    a, b = hosts["ha"], hosts["hb"]
    on_a = start(a.docker, "-e", "PORTS=80", cmd=HTTPD)
    on_b = start(b.docker, "-e", "PORTS=80", cmd=HTTPD)
    on_main = start(docker)
    ip_a, ip_b = a.docker.ip_of(on_a, SHARED), b.docker.ip_of(on_b, SHARED)
    ip_main = docker.ip_of(on_main, SHARED)
    # The first packet to a new tunnel endpoint may be lost (OVS resolves the
    # remote's underlay address first): each pair gets a few tries.
    assert helpers.wait_until(lambda: pings(a.docker, on_a, ip_b), 20), "host A -> host B"
    assert helpers.wait_until(lambda: pings(b.docker, on_b, ip_main), 20), "host B -> main"
    assert helpers.wait_until(lambda: pings(docker, on_main, ip_a), 20), "main host -> host A"
    b_hostname = b.docker.out("inspect", "-f", "{{.Config.Hostname}}", on_b)
    assert helpers.wait_until(lambda: http_get(a.docker, on_a, ip_b), 15) == \
        f"hello-{b_hostname}", "TCP from host A to host B"
    a_hostname = a.docker.out("inspect", "-f", "{{.Config.Hostname}}", on_a)
    assert http_get(b.docker, on_b, ip_a) == f"hello-{a_hostname}", "TCP from host B to host A"
    for host, ip in ((a, ip_a), (b, ip_b)):
        port = neutron.api.get_port(port_of(neutron, ip, shared).id)
        assert port.binding_host_id == host.hostname
        assert port.status == "ACTIVE"


def test_exposed_ports_are_enforced_from_another_host(hosts, shared, neutron, ovs, stack,
                                                      start, cleanup, unique):
    """A container on host B with --expose 9999; a client on the main host in a
    group of its own: 9999 reaches it through the tunnel, 8888 does not."""
    b = hosts["hb"]
    web = start(b.docker, "--expose", "9999", "-e", "PORTS=9999 8888", cmd=HTTPD)
    ip = b.docker.ip_of(web, SHARED)
    ns = helpers.outsider_namespace(neutron, ovs, stack.host, shared, cleanup, unique)
    assert helpers.wait_until(lambda: helpers.tcp_connects(ns, ip, 9999), 20), \
        "exposed port 9999 on host B refused a client on the main host"
    assert not helpers.tcp_connects(ns, ip, 8888), "port 8888 was reachable without --expose"


@pytest.mark.parametrize(("name", "loopback_port", "floating_port"),
                         [("ha", 18291, 18292), ("hb", 18293, 18294)])
def test_published_ports_are_served_on_each_host(hosts, shared, neutron, start, name,
                                                 loopback_port, floating_port):
    """-p 127.0.0.1:P:80 is served on the host's own loopback by its Kuryr; -p Q:80
    is forwarded on that host's floating IP, reached from outside the cloud."""
    host = hosts[name]
    web = start(host.docker, "-p", f"127.0.0.1:{loopback_port}:80", "-p",
                f"{floating_port}:80", "-e", "PORTS=80", cmd=HTTPD)
    expected = "hello-" + host.docker.out("inspect", "-f", "{{.Config.Hostname}}", web)
    assert helpers.wait_until(
        lambda: http_get_from_namespace(host.netns, "127.0.0.1", loopback_port), 15) == expected
    fips = [f for f in neutron.api.ips()
            if f.description == f"kuryr-publish:{host.hostname}"]
    assert len(fips) == 1, f"floating IPs of {host.hostname}: {fips}"
    assert helpers.wait_until(lambda: http_get_from_namespace(
        OUTSIDE_NETNS, fips[0].floating_ip_address, floating_port), 20) == expected


# -- ownership: one host's Kuryr never touches another's ------------------------------------

def forgotten_network(neutron, hostname: str, cleanup) -> str:
    """A Neutron network as that host's Kuryr makes one, for a Docker network its
    dockerd does not know (a DeleteNetwork that failed)."""
    docker_id = os.urandom(32).hex()
    net = neutron.api.create_network(name=marks.network_name(docker_id))
    cleanup(lambda: neutron.api.delete_network(net.id, ignore_missing=True))
    neutron.api.set_tags(net, [*marks.network_tags(docker_id), marks.host_tag(hostname)])
    return net.id


def test_gc_on_one_host_never_touches_another_hosts_resources(hosts, shared, neutron, start,
                                                              cleanup, unique):
    a, b = hosts["ha"], hosts["hb"]
    own_b = f"own-{unique}"
    b.docker.run("network", "create", *KURYR, "--subnet", "10.78.0.0/24", own_b)
    cleanup(lambda: remove_docker_network(b.docker, own_b))
    (b_net,) = [n.id for n in neutron.networks_tagged(
        marks.network_tags(b.docker.network_id(own_b)))]
    web_b = start(b.docker, "--expose", "7777", net=own_b, cmd=("sleep", "600"))
    peer_b = start(b.docker, net=own_b)
    port_b = port_of(neutron, b.docker.ip_of(web_b, own_b), b_net)
    groups_b = set(neutron.api.get_port(port_b.id).security_group_ids)
    links_b = b.links()
    forgotten_a = forgotten_network(neutron, a.hostname, cleanup)
    forgotten_b = forgotten_network(neutron, b.hostname, cleanup)

    report = a.collect_garbage()

    assert neutron.api.find_network(forgotten_a) is None, f"A's own leftover stayed: {report}"
    assert neutron.api.find_network(forgotten_b) is not None, "A collected B's network"
    assert neutron.api.find_network(b_net) is not None, "A collected B's Docker network"
    port = neutron.api.get_port(port_b.id)
    assert port.binding_host_id == b.hostname
    assert set(port.security_group_ids) == groups_b
    assert all(neutron.api.find_security_group(g) is not None for g in groups_b)
    assert links_b <= b.links(), "A's collector removed links of B"
    ip_web = b.docker.ip_of(web_b, own_b)
    assert helpers.wait_until(lambda: pings(b.docker, peer_b, ip_web), 10)


def test_delete_network_conflict_deletes_only_this_hosts_ports(hosts, neutron, start,
                                                              cleanup, unique):
    """Host A's Kuryr made a network host B adopted: A's DeleteNetwork meets B's
    port (Conflict), clears only A's own unused ports, and B's container keeps
    its port and its traffic."""
    a, b = hosts["ha"], hosts["hb"]
    name = f"cf-{unique}"
    a.docker.run("network", "create", *KURYR, "--subnet", "10.79.0.0/24", name)
    cleanup(lambda: remove_docker_network(a.docker, name))
    (net,) = neutron.networks_tagged(marks.network_tags(a.docker.network_id(name)))
    cleanup(lambda: helpers.delete_network(neutron, net.id))
    b.docker.run("network", "create", *KURYR, "--subnet", "10.79.0.0/24", "-o",
                 f"neutron.net.uuid={net.id}", name)
    cleanup(lambda: remove_docker_network(b.docker, name))
    on_b, peer_b = start(b.docker, net=name), start(b.docker, net=name)
    left_on_a = start(a.docker, net=name)
    a.docker.run("rm", "-f", left_on_a)
    port_b = port_of(neutron, b.docker.ip_of(on_b, name), net.id)

    a.docker.run("network", "rm", name, check=False)  # Neutron refuses: B's ports

    ports = neutron.ports(network_id=net.id)
    assert port_b.id in {p.id for p in ports}
    assert binding_host(neutron, port_b.id) == b.hostname
    assert not [p.id for p in ports if p.binding_host_id == a.hostname
                and p.device_owner == marks.DEVICE_OWNER], "A's unused ports stayed"
    ip_on_b = b.docker.ip_of(on_b, name)
    assert helpers.wait_until(lambda: pings(b.docker, peer_b, ip_on_b), 10)


# -- a host fails ----------------------------------------------------------------------------

def kuryr_ports_of(neutron, hostname: str, network_id: str) -> list:
    return [p for p in neutron.ports(network_id=network_id)
            if p.binding_host_id == hostname and p.device_owner in marks.DOCKER_OWNERS.all]


def consistent(neutron, host: SimHost, network_id: str) -> str:
    """'' when the host's Kuryr ports on the network are exactly its running
    containers' and its pool's, and its veths exactly those ports'."""
    running = host.docker.out("ps", "-q", "--filter", f"network={SHARED}").split()
    addresses = {host.docker.ip_of(c, SHARED) for c in running}
    ports = kuryr_ports_of(neutron, host.hostname, network_id)
    used = {f.ip_address for p in ports if p.device_owner == marks.DEVICE_OWNER
            for f in p.fixed_ips}
    if used != addresses:
        return f"ports in use {sorted(used)} != running containers' {sorted(addresses)}"
    taps = {n for n in host.links() if n.startswith("tap")}
    bound_here = {f"tap{p.id[:11]}" for p in neutron.ports(binding_host_id=host.hostname)}
    if not taps <= bound_here:
        return f"veths of no port bound to this host: {sorted(taps - bound_here)}"
    return ""


def test_a_failed_host_harms_no_other_and_recovers_without_leaks(hosts, shared, docker,
                                                                 neutron, start):
    a, b = hosts["ha"], hosts["hb"]
    on_a, on_b, on_main = start(a.docker), start(b.docker), start(docker)
    ip_b = b.docker.ip_of(on_b, SHARED)
    port_b = port_of(neutron, ip_b, shared)
    assert helpers.wait_until(lambda: pings(a.docker, on_a, ip_b), 20)

    for what in ("KURYR", "DOCKERD", "OVN_CONTROLLER"):
        b.kill_9(what)
    # Host A keeps serving: a new container starts and talks to the others.
    later_a = start(a.docker)
    assert helpers.wait_until(lambda: pings(a.docker, later_a, a.docker.ip_of(on_a, SHARED)),
                              20)
    ip_main = docker.ip_of(on_main, SHARED)
    assert helpers.wait_until(lambda: pings(a.docker, later_a, ip_main), 20)
    # B's ports stay B's: bound to B, and A's collector leaves them.
    a.collect_garbage()
    assert binding_host(neutron, port_b.id) == b.hostname

    started = time.monotonic()
    helpers.aio("host", "up", "hb")
    back = time.monotonic() - started
    # dockerd found its containers without their plugin's answer and stopped
    # them (no live-restore); what Kuryr made for them goes with them, and what
    # a crash left is the collector's.
    b.collect_garbage()
    assert helpers.wait_until(lambda: consistent(neutron, b, shared) == "", 30, interval=1), \
        f"{consistent(neutron, b, shared)} ({back:.1f} s to come back)"
    again_b = start(b.docker)
    assert helpers.wait_until(lambda: pings(b.docker, again_b, a.docker.ip_of(on_a, SHARED)),
                              20), "host B back: no reach to host A"


# -- churn on both hosts at once --------------------------------------------------------------

def test_churn_on_both_hosts_leaves_one_live_port_per_container(hosts, shared, neutron,
                                                                unique):
    a, b = hosts["ha"], hosts["hb"]

    def churn(host: SimHost) -> list[str]:
        kept = []
        for round_ in range(ROUNDS):
            names = [f"ch-{unique}-{host.name}-{round_}-{i}" for i in range(PER_ROUND)]
            with ThreadPoolExecutor(PER_ROUND) as pool:
                list(pool.map(lambda n: host.docker.run(
                    "run", "-d", "--name", n, "--net", SHARED, "busybox", "sleep", "600"),
                    names))
            with ThreadPoolExecutor(REMOVED) as pool:
                list(pool.map(lambda n: host.docker.run("rm", "-f", n), names[:REMOVED]))
            kept += names[REMOVED:]
        return kept

    try:
        with ThreadPoolExecutor(2) as pool:
            kept = dict(zip((a, b), pool.map(churn, (a, b)), strict=True))
        addresses: dict[str, str] = {}
        for host, names in kept.items():
            for name in names:
                ip = host.docker.ip_of(name, SHARED)
                assert ip not in addresses, f"{ip}: {name} and {addresses[ip]}"
                addresses[ip] = name
                port = port_of(neutron, ip, shared)
                assert port.binding_host_id == host.hostname, f"{name}: bound elsewhere"
                # The container's record (owner, device_id) is a background write.
                assert helpers.wait_until(lambda p=port.id: neutron.api.get_port(p).device_owner
                                          == marks.DEVICE_OWNER, 20), f"{name}: not recorded"
            assert helpers.wait_until(lambda h=host: consistent(neutron, h, shared) == "", 30,
                                      interval=1), consistent(neutron, host, shared)
        for host in (a, b):
            for name in kept[host]:
                assert helpers.wait_until(lambda h=host, n=name: neutron.api.get_port(
                    port_of(neutron, h.docker.ip_of(n, SHARED), shared).id).status == "ACTIVE",
                    20), f"{name}: port not ACTIVE"
    finally:
        for host in (a, b):
            for cid in host.docker.out("ps", "-aq", "--filter", f"name=ch-{unique}").split():
                host.docker.run("rm", "-f", cid, check=False)


# -- the host's name is its chassis' ----------------------------------------------------------

def test_kuryr_refuses_a_host_name_that_is_not_its_ovn_chassis(stack, tmp_path):
    conf = helpers.stack_kuryr_conf_with(stack, tmp_path / "kuryr.conf", {
        ("DEFAULT", "host"): "not-" + stack.host,
        ("DEFAULT", "kuryr_uri"): f"unix://{tmp_path}/kuryr.sock"})
    proc = subprocess.run([sys.executable, "-m", "kuryr.cli", "serve", "--config-file",
                           str(conf)], capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode != 0
    assert f"Set [DEFAULT] host = {stack.host}" in proc.stderr
    assert not (tmp_path / "kuryr.sock").exists()


def test_hosts_are_listed_by_status(hosts):
    proc = subprocess.run([helpers.aio_command(), "status"], capture_output=True, text=True,
                          check=False)
    for name in HOSTS:
        assert name in proc.stdout + proc.stderr


def test_purging_a_host_deletes_what_its_kuryr_left_in_neutron(hosts, neutron, unique):
    """Last: `host down --purge` wipes its Docker data, so nothing else would
    remove its networks, ports, groups and floating IP."""
    b = hosts["hb"]
    b.docker.run("network", "create", *KURYR, "--subnet", "10.80.0.0/24", f"pg-{unique}")
    b.docker.run("run", "-d", "--name", f"pg-{unique}", "--net", f"pg-{unique}", "--expose",
                 "7777", "-p", "18295:80", "busybox", "sleep", "600")
    helpers.aio("host", "down", "hb", "--purge")
    assert neutron.ports(binding_host_id=b.hostname) == []
    assert neutron.networks_tagged([marks.host_tag(b.hostname)]) == []
    assert [g.name for g in neutron.api.security_groups()
            if (g.description or "").startswith(marks.host_mark(b.hostname))] == []
    assert list(neutron.api.ips(
        description=marks.publishing_ip_description(b.hostname))) == []

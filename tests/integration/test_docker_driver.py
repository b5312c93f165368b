"""Kuryr as Docker's network and IPAM driver, through the real dockerd and
neutron-server: networks, containers and their packets."""

from __future__ import annotations

import ipaddress
import subprocess
import time

import pytest

from kuryr.neutron import marks

from . import helpers
from .conftest import KURYR


def neutron_network_of(neutron, docker, name):
    found = neutron.networks_tagged(marks.network_tags(docker.network_id(name)))
    assert len(found) == 1, f"{len(found)} Neutron networks carry the tags of {name}"
    return found[0]


# -- networks ----------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["v4", "v6", "dual"])
@pytest.mark.usefixtures("no_leaks")
def test_network_create_and_rm_in_neutron(neutron, docker, make_network, unique, kind):
    args = {"v4": ("--subnet", "10.61.0.0/24", "--gateway", "10.61.0.1"),
            "v6": ("--ipv6", "--subnet", "fd61:1::/64"),
            "dual": ("--ipv6", "--subnet", "10.62.0.0/24", "--subnet", "fd62:1::/64")}[kind]
    name = make_network(*args)
    docker_id = docker.network_id(name)
    net = neutron_network_of(neutron, docker, name)
    assert set(marks.network_tags(docker_id)) <= set(net.tags)
    assert net.name == marks.network_name(docker_id)
    cidrs = {s.cidr: s for s in neutron.subnets(network_id=net.id)}
    expected = {"v4": {"10.61.0.0/24"}, "v6": {"fd61:1::/64"},
                "dual": {"10.62.0.0/24", "fd62:1::/64"}}[kind]
    assert expected <= set(cidrs)
    if kind == "v4":
        assert cidrs["10.61.0.0/24"].gateway_ip == "10.61.0.1"
        assert cidrs["10.61.0.0/24"].name == "kuryr-subnet-10.61.0.0/24"
    docker.run("network", "rm", name)
    assert neutron.networks_tagged(marks.network_tags(docker_id)) == []


def test_network_without_subnet_gets_one_from_the_default_pool(neutron, docker, make_network):
    name = make_network()
    net = neutron_network_of(neutron, docker, name)
    (subnet,) = neutron.subnets(network_id=net.id)
    pool = neutron.find_subnetpool("kuryr")
    assert subnet.subnet_pool_id == pool.id
    assert ipaddress.ip_network(subnet.cidr).subnet_of(ipaddress.ip_network("10.10.0.0/16"))


def test_ip_range_becomes_the_allocation_pool(neutron, docker, make_network, run_container):
    name = make_network("--subnet", "10.63.0.0/16", "--ip-range", "10.63.5.0/24")
    net = neutron_network_of(neutron, docker, name)
    (subnet,) = neutron.subnets(network_id=net.id)
    # The whole range: .0 and .255 of a /24 inside a /16 are ordinary addresses
    # (Docker's own IPAM hands them out too); only the /16's own ends are not.
    assert subnet.allocation_pools == (("10.63.5.0", "10.63.5.255"),)
    container = run_container(name)
    assert ipaddress.ip_address(docker.ip_of(container, name)) in \
        ipaddress.ip_network("10.63.5.0/24")


# -- containers -----------------------------------------------------------------------
@pytest.mark.usefixtures("no_leaks")
def test_two_containers_ping_and_exchange_tcp(neutron, docker, make_network, run_container):
    name = make_network("--subnet", "10.64.0.0/24")
    server = run_container(name, cmd=("sh", "-c", "echo kuryr-ok | nc -l -p 7000"))
    client = run_container(name)
    server_ip = docker.ip_of(server, name)
    assert docker.run("exec", client, "ping", "-c", "2", "-W", "2", server_ip,
                      check=False).returncode == 0
    got = docker.run("exec", client, "sh", "-c", f"nc {server_ip} 7000 </dev/null",
                     check=False)
    assert "kuryr-ok" in got.stdout, got.stderr
    # The container's port in Neutron: bound here, owned by Kuryr, ACTIVE.
    (port,) = neutron.api.ports(fixed_ips=[f"ip_address={docker.ip_of(client, name)}"])
    assert helpers.wait_until(  # recorded in the background
        lambda: neutron.get_port(port.id).device_owner == marks.DEVICE_OWNER, 10)
    assert port.binding_host_id
    assert port.binding_vif_type == "ovs"
    assert port.mac_address == docker.out(
        "inspect", "-f", f'{{{{(index .NetworkSettings.Networks "{name}").MacAddress}}}}', client)
    assert helpers.wait_until(lambda: neutron.get_port(port.id).status == "ACTIVE", 10)


@pytest.mark.usefixtures("no_leaks")
def test_dual_stack_containers_ping_over_ipv6(docker, make_network, run_container):
    name = make_network("--ipv6", "--subnet", "10.65.0.0/24", "--subnet", "fd65:1::/64")
    a, b = run_container(name), run_container(name)
    b6 = docker.ip_of(b, name, v6=True)
    assert b6.startswith("fd65:1::")
    assert docker.run("exec", a, "ping", "-c", "2", "-W", "2", docker.ip_of(b, name),
                      check=False).returncode == 0
    ok = helpers.wait_until(lambda: docker.run("exec", a, "ping6", "-c", "1", "-W", "2", b6,
                                               check=False).returncode == 0, 10)
    assert ok, "no IPv6 connectivity between dual-stack containers"


def test_fixed_ip(docker, make_network, run_container):
    name = make_network("--subnet", "10.66.0.0/24")
    container = run_container(name, "--ip", "10.66.0.50")
    assert docker.ip_of(container, name) == "10.66.0.50"
    out = docker.out("exec", container, "ip", "-4", "addr", "show", "eth0")
    assert "10.66.0.50/24" in out


@pytest.mark.usefixtures("no_leaks")
def test_connect_and_disconnect(neutron, docker, make_network, run_container):
    first = make_network("--subnet", "10.67.0.0/24")
    second = make_network("--subnet", "10.68.0.0/24")
    peer = run_container(second)
    container = run_container(first)
    docker.run("network", "connect", second, container)
    peer_ip = docker.ip_of(peer, second)
    assert docker.run("exec", container, "ping", "-c", "1", "-W", "2", peer_ip,
                      check=False).returncode == 0
    ip = docker.ip_of(container, second)
    assert neutron.api.ports(fixed_ips=[f"ip_address={ip}"])
    endpoint = docker.out("inspect", "-f", "{{(index .NetworkSettings.Networks \""
                          + second + "\").EndpointID}}", container)
    docker.run("network", "disconnect", second, container)
    # The port is deleted, or (plain, pooled network) back in the pool: no longer
    # the endpoint's in Neutron either way.
    assert helpers.wait_until(lambda: all(
        p.device_owner == marks.POOL_DEVICE_OWNER and p.device_id != endpoint
        for p in neutron.api.ports(network_id=neutron_network_of(neutron, docker, second).id,
                               fixed_ips=[f"ip_address={ip}"])), 10)
    assert "eth1" not in docker.out("exec", container, "ip", "link")


# -- adoption ----------------------------------------------------------------------------
def test_existing_network_adopted_and_left_intact(neutron, docker, make_network,
                                                  run_container, cleanup, unique):
    net = neutron.api.create_network(name=f"user-net-{unique}")
    cleanup(lambda: helpers.delete_network(neutron, net.id))
    subnet = neutron.api.create_subnet(network_id=net.id, ip_version=4, cidr="10.69.0.0/24",
                                   is_dhcp_enabled=False, name=f"user-subnet-{unique}")
    name = make_network("--subnet", "10.69.0.0/24", "-o", f"neutron.net.uuid={net.id}")
    docker_id = docker.network_id(name)
    tags = set(neutron.get_network(net.id).tags)
    assert set(marks.network_tags(docker_id)) | {marks.existing_network_tag(docker_id)} <= tags
    a, b = run_container(name), run_container(name)
    assert docker.run("exec", a, "ping", "-c", "1", "-W", "2", docker.ip_of(b, name),
                      check=False).returncode == 0
    docker.run("rm", "-f", a, b)
    docker.run("network", "rm", name)
    still = neutron.get_network(net.id)
    assert not [t for t in still.tags if t.startswith("kuryr.")]
    assert [s.id for s in neutron.subnets(network_id=net.id)] == [subnet.id]


def test_precreated_port_adopted_and_kept(neutron, docker, make_network, run_container):
    name = make_network("--subnet", "10.70.0.0/24")
    net = neutron_network_of(neutron, docker, name)
    (subnet,) = neutron.subnets(network_id=net.id)
    port = neutron.api.create_port(network_id=net.id, name="user-port",
                               fixed_ips=[{"subnet_id": subnet.id, "ip_address": "10.70.0.77"}])
    try:
        container = run_container(name, "--ip", "10.70.0.77")
        # device_id/device_owner are recorded in the background.
        def adopted_port():
            now = neutron.get_port(port.id)
            return now if now.device_owner == marks.DEVICE_OWNER else None

        adopted = helpers.wait_until(adopted_port, 10)
        assert adopted is not None, neutron.get_port(port.id).device_owner
        assert marks.PORT_EXISTING_TAG in adopted.tags
        assert docker.ip_of(container, name) == "10.70.0.77"
        docker.run("rm", "-f", container)

        def unbound_port():
            now = neutron.get_port(port.id)
            return None if now.device_id else now

        kept = helpers.wait_until(unbound_port, 10)
        assert kept is not None, "the adopted port was not unbound"
        assert kept.device_owner == ""
        assert kept.binding_host_id in ("", None)
    finally:
        neutron.delete_port(port.id)


# -- errors: clear, and nothing leaked -----------------------------------------------------
@pytest.mark.usefixtures("no_leaks")
def test_unknown_neutron_network_is_a_clear_error(neutron, docker, unique):
    proc = docker.run("network", "create", *KURYR, "-o", "neutron.net.uuid=no-such-net",
                      f"bad-{unique}", check=False)
    assert proc.returncode != 0
    assert "no-such-net" in proc.stderr
    assert "does not exist" in proc.stderr


@pytest.mark.usefixtures("no_leaks")
def test_address_outside_subnet_and_in_use(docker, make_network, run_container, unique):
    name = make_network("--subnet", "10.71.0.0/24", "--ip-range", "10.71.0.0/25")
    outside = docker.run("run", "--rm", "--net", name, "--ip", "10.71.1.5", "busybox", "true",
                         check=False)
    assert outside.returncode != 0
    run_container(name, "--ip", "10.71.0.20")
    in_use = docker.run("run", "--rm", "--net", name, "--ip", "10.71.0.20", "busybox", "true",
                        check=False)
    assert in_use.returncode != 0, in_use.stderr
    assert "already in use" in in_use.stderr, in_use.stderr


@pytest.mark.usefixtures("no_leaks")
def test_overlapping_pools_are_refused(neutron, docker, make_network, unique):
    make_network("--subnet", "10.72.0.0/24")
    before = len(list(neutron.api.networks()))
    proc = docker.run("network", "create", *KURYR, "--subnet", "10.72.0.0/16",
                      f"overlap-{unique}", check=False)
    assert proc.returncode != 0, proc.stderr
    assert "overlaps" in proc.stderr, proc.stderr
    assert len(list(neutron.api.networks())) == before, "a half-created network was left"


# -- restarts -----------------------------------------------------------------------------
@pytest.mark.usefixtures("no_leaks")
def test_kuryr_restart_keeps_containers_and_cleans_up_later(stack, docker, make_network,
                                                            run_container):
    name = make_network("--subnet", "10.73.0.0/24")
    a, b = run_container(name), run_container(name)
    helpers.restart_kuryr(stack)
    assert docker.run("exec", a, "ping", "-c", "1", "-W", "2", docker.ip_of(b, name),
                      check=False).returncode == 0
    c = run_container(name)  # new work after the restart
    assert docker.run("exec", c, "ping", "-c", "1", "-W", "2", docker.ip_of(a, name),
                      check=False).returncode == 0
    docker.run("rm", "-f", a, b, c)
    docker.run("network", "rm", name)


@pytest.mark.usefixtures("no_leaks")
def test_dockerd_restart_keeps_connectivity(stack, docker, make_network, run_container):
    name = make_network("--subnet", "10.74.0.0/24")
    a = run_container(name, "--restart", "always")
    b = run_container(name, "--restart", "always")
    helpers.restart_dockerd(stack)
    running = helpers.wait_until(
        lambda: docker.out("inspect", "-f", "{{.State.Running}}", a) == "true", 30)
    assert running
    b_ip = docker.ip_of(b, name)
    assert helpers.wait_until(lambda: docker.run("exec", a, "ping", "-c", "1", "-W", "2", b_ip,
                                                 check=False).returncode == 0, 20)
    docker.run("rm", "-f", a, b)
    docker.run("network", "rm", name)


def test_start_and_stop_request_budget(stack, docker, make_network):
    """Without the port pool: <= 2 Neutron requests per container start, <= 1 per
    stop, counted at neutron-server (its access log), background writes included."""
    name = make_network("--subnet", "10.75.0.0/24", "-o", "kuryr.pool.size=0")
    access = stack.log("neutron-access")

    def requests_during(*args: str) -> int:
        before = len(access.read_text().splitlines())
        docker.run(*args)
        time.sleep(2)  # let background writes land
        return len(access.read_text().splitlines()) - before

    docker.run("create", "--name", f"budget-{name}", "--net", name, "busybox", "sleep", "60")
    try:
        assert requests_during("start", f"budget-{name}") <= 2
        assert requests_during("stop", "-t", "0", f"budget-{name}") <= 1
    finally:
        docker.run("rm", "-f", f"budget-{name}", check=False)


def test_pooled_start_makes_no_neutron_request_on_the_critical_path(stack, docker,
                                                                     make_network):
    """With the pool, RequestAddress, CreateEndpoint and Join make no Neutron
    request (Kuryr's per-call log); the container still gets a working port."""
    name = make_network("--subnet", "10.76.0.0/24", "-o", "kuryr.pool.size=2")
    assert helpers.wait_until(lambda: _pool_ready(stack, docker, name) >= 2, 20)
    time.sleep(0.5)
    log = stack.log("kuryr")
    offset = log.stat().st_size
    docker.run("run", "--rm", "--net", name, "busybox", "true")
    counts = {}
    for line in log.read_bytes()[offset:].decode(errors="replace").splitlines():
        for call in ("IpamDriver.RequestAddress", "NetworkDriver.CreateEndpoint",
                     "NetworkDriver.Join"):
            if f"{call}: " in line and "Neutron requests" in line:
                counts[call] = int(line.split(f"{call}: ")[1].split()[0])
    assert counts == {"IpamDriver.RequestAddress": 0, "NetworkDriver.CreateEndpoint": 0,
                      "NetworkDriver.Join": 0}, counts


@pytest.mark.usefixtures("no_leaks")
def test_a_stopped_containers_port_serves_the_next_one(stack, docker, make_network,
                                                       run_container, neutron):
    """Ports go back to the pool when their container leaves: a stream of short-lived
    containers creates and deletes no Neutron port, and each one has connectivity."""
    name = make_network("--subnet", "10.78.0.0/24", "-o", "kuryr.pool.size=2")
    assert helpers.wait_until(lambda: _pool_ready(stack, docker, name) >= 2, 20)
    server = run_container(name)
    server_ip = docker.ip_of(server, name)
    assert helpers.wait_until(lambda: _pool_ready(stack, docker, name) >= 2, 20)
    time.sleep(1)
    access = stack.log("neutron-access")
    before = len(access.read_text().splitlines())
    for _ in range(5):
        docker.run("run", "--rm", "--net", name, "busybox", "ping", "-c", "1", "-W", "2",
                   server_ip)
    time.sleep(2)
    lines = access.read_text().splitlines()[before:]
    created = [line for line in lines if '"POST /v2.0/ports' in line]
    deleted = [line for line in lines if '"DELETE /v2.0/ports' in line]
    # At most one top-up (the first container leaves the pool below its size
    # until its port comes back), never a port per container.
    assert len(created) <= 1, (created, deleted)
    assert not deleted, (created, deleted)
    network_id = neutron.networks_tagged(marks.network_tags(docker.network_id(name)))[0].id
    # Back in the pool, Neutron says so: no container's device_id left behind.
    assert helpers.wait_until(lambda: all(
        p.device_owner == marks.POOL_DEVICE_OWNER and not p.device_id
        for p in neutron.api.ports(network_id=network_id)
        if p.device_owner != marks.DEVICE_OWNER or p.device_id != _endpoint_of(docker, server,
                                                                                 name)), 20)


@pytest.mark.usefixtures("no_leaks")
def test_removing_a_network_right_after_its_containers_left_is_prompt(stack, docker,
                                                                       make_network):
    """Containers leave (their ports go back to the pool with a queued PUT), then
    the network is removed at once: draining the pool deletes those ports, so their
    queued writes are dropped, not retried against 404s while DeleteNetwork (and
    every background write after it) waits; seen as a 60 s DeleteNetwork in CI."""
    name = make_network("--subnet", "10.79.0.0/24", "-o", "kuryr.pool.size=1")
    assert helpers.wait_until(lambda: _pool_ready(stack, docker, name) >= 1, 20)
    log = stack.log("kuryr")
    before = len(log.read_text().splitlines())
    # Together, so that their ports' return writes queue up behind each other.
    runs = [subprocess.Popen([helpers.DOCKER_CLI, "-H", docker.host, "run", "--rm", "--net",
                              name, "busybox", "true"]) for _ in range(4)]
    assert [run.wait(timeout=120) for run in runs] == [0] * 4
    started = time.monotonic()
    docker.run("network", "rm", name)
    took = time.monotonic() - started
    lines = log.read_text().splitlines()[before:]
    retried = [line for line in lines if "could not be found" in line]
    assert not retried, retried
    assert took < 20, f"docker network rm took {took:.1f} s"


def _endpoint_of(docker, container: str, network: str) -> str:
    return docker.out("inspect", "-f",
                      f'{{{{(index .NetworkSettings.Networks "{network}").EndpointID}}}}',
                      container)


def _pool_ready(stack, docker, name) -> int:
    from kuryr.binding import netlink
    from kuryr.binding.vif import VIF
    from kuryr.neutron.client import connect_endpoint

    neutron = connect_endpoint(stack.neutron_url)
    net = neutron.networks_tagged(marks.network_tags(docker.network_id(name)))[0]
    ports = neutron.ports(network_id=net.id, device_owner=marks.POOL_DEVICE_OWNER)
    # Ready means plugged: the container end of its veth waits in the host namespace.
    return sum(netlink.link_exists(VIF(port_id=p.id, mac=p.mac_address).container_ifname)
               for p in ports)


@pytest.mark.usefixtures("no_leaks")
def test_burst_is_served_by_bulk_port_creation(stack, docker, make_network):
    """12 concurrent containers on a network whose pool holds 2: all start; those
    that find the pool empty create their own port (one POST each: waiting for the
    bulk refill was measured slower on a busy Neutron), refills stay bulk."""
    import threading

    name = make_network("--subnet", "10.77.0.0/24", "-o", "kuryr.pool.size=2")
    assert helpers.wait_until(lambda: _pool_ready(stack, docker, name) >= 2, 20)
    access = stack.log("neutron-access")
    before = len(access.read_text().splitlines())
    results = []

    def one():
        results.append(docker.run("run", "--rm", "--net", name, "busybox", "true",
                                  check=False).returncode)

    threads = [threading.Thread(target=one) for _ in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == [0] * 12
    posts = [line for line in access.read_text().splitlines()[before:]
             if '"POST /v2.0/ports ' in line]
    print(f"{len(posts)} port POSTs for a burst of 12")
    assert len(posts) <= 14, f"{len(posts)} port POSTs for a burst of 12"

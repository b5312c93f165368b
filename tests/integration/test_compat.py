"""Drop-in for kuryr-libnetwork (issue 11) on the real stack: the subnet of an
--ip-range, kuryrPool-<cidr> subnetpools, pre-created ports on networks sharing
a CIDR, and the exact one-port-per-container footprint."""

from __future__ import annotations

import ipaddress
import subprocess

from kuryr.neutron import marks

from . import helpers


def neutron_net_of(neutron, docker, name: str):
    docker_id = docker.out("network", "inspect", "-f", "{{.Id}}", name)
    (net,) = neutron.api.networks(tags=marks.network_tags(docker_id))
    return net


def container_net(docker, container: str, network: str) -> dict:
    import json

    return json.loads(docker.out("inspect", "-f",
                                 f"{{{{json (index .NetworkSettings.Networks \"{network}\")}}}}",
                                 container))


def subnetpools_named(neutron, name: str) -> list:
    return list(neutron.api.subnet_pools(name=name))


# -- 1. the subnet of an --ip-range ---------------------------------------------------------
def test_an_adopted_network_whose_subnet_is_the_ip_range_is_used_as_is(
        stack, docker, neutron, make_network, run_container, cleanup, unique):
    """kuryr-libnetwork lays out --subnet 10.191.0.0/16 --ip-range 10.191.0.0/24 as a
    Neutron subnet 10.191.0.0/24: adopting such a network takes that subnet (no
    "overlaps with another subnet"), containers get /24 addresses on it and talk."""
    net = neutron.api.create_network(name=f"range-{unique}")
    cleanup(lambda: helpers.delete_network(neutron, net.id))
    subnet = neutron.api.create_subnet(network_id=net.id, ip_version=4, cidr="10.191.0.0/24",
                                       gateway_ip="10.191.0.1", is_dhcp_enabled=False,
                                       name=f"kuryr-subnet-10.191.0.0/24-{unique}")
    name = make_network("-o", f"neutron.net.name={net.name}", "--subnet", "10.191.0.0/16",
                        "--ip-range", "10.191.0.0/24", "--gateway", "10.191.0.1")
    a, b = run_container(name), run_container(name)
    got = [container_net(docker, c, name) for c in (a, b)]
    assert [g["IPPrefixLen"] for g in got] == [24, 24], got
    for g in got:
        assert ipaddress.ip_address(g["IPAddress"]) in ipaddress.ip_network("10.191.0.0/24")
    assert docker.run("exec", a, "ping", "-c", "1", "-W", "2", got[1]["IPAddress"],
                      check=False).returncode == 0
    assert [s.id for s in neutron.api.subnets(network_id=net.id)] == [subnet.id]
    # Kuryr's ports (the containers' and any pooled), not Neutron's own: a
    # container's device_id is written in the background and may lag.
    ports = [p for p in neutron.api.ports(network_id=net.id)
             if p.device_owner in marks.KURYR_DEVICE_OWNERS]
    assert len(ports) >= 2
    assert {p.fixed_ips[0]["subnet_id"] for p in ports} == {subnet.id}
    docker.run("rm", "-f", a, b)
    helpers.remove_network(docker, stack, name)
    left = neutron.api.get_network(net.id)
    assert not [t for t in left.tags if t.startswith("kuryr")], left.tags
    assert [s.id for s in neutron.api.subnets(network_id=net.id)] == [subnet.id]


def test_a_new_network_with_an_ip_range_is_the_subnet_with_the_range_to_allocate(
        stack, docker, neutron, make_network, run_container):
    """Kuryr's own layout: the subnet is --subnet (the container's prefix, as with
    Docker's bridge), the range its allocation pool, in the subnetpool
    kuryrPool-<subnet> that kuryr-libnetwork would name."""
    name = make_network("--subnet", "10.192.0.0/16", "--ip-range", "10.192.5.0/24")
    net = neutron_net_of(neutron, docker, name)
    (subnet,) = neutron.api.subnets(network_id=net.id)
    (pool,) = subnetpools_named(neutron, "kuryrPool-10.192.0.0/16")
    assert (subnet.cidr, subnet.name, subnet.subnet_pool_id) == (
        "10.192.0.0/16", "kuryr-subnet-10.192.0.0/16", pool.id)
    assert subnet.allocation_pools == [{"start": "10.192.5.0", "end": "10.192.5.255"}]
    got = container_net(docker, run_container(name), name)
    assert got["IPPrefixLen"] == 16
    assert ipaddress.ip_address(got["IPAddress"]) in ipaddress.ip_network("10.192.5.0/24")


# -- 2. kuryrPool-<cidr> subnetpools --------------------------------------------------------
def test_a_subnets_kuryrpool_lives_as_long_as_its_network(stack, docker, neutron,
                                                          make_network):
    name = make_network("--subnet", "10.193.0.0/24")
    assert len(subnetpools_named(neutron, "kuryrPool-10.193.0.0/24")) == 1
    helpers.remove_network(docker, stack, name)
    assert subnetpools_named(neutron, "kuryrPool-10.193.0.0/24") == []


def test_a_kuryrpool_that_exists_is_used_not_duplicated(stack, docker, neutron, make_network,
                                                       cleanup):
    """A pool kuryr-libnetwork left (same name) is found by name."""
    made = neutron.api.create_subnet_pool(name="kuryrPool-10.194.0.0/24",
                                          prefixes=["10.194.0.0/24"], default_prefix_length=24)
    cleanup(lambda: neutron.api.delete_subnet_pool(made.id, ignore_missing=True))
    name = make_network("--subnet", "10.194.0.0/24")
    (subnet,) = neutron.api.subnets(network_id=neutron_net_of(neutron, docker, name).id)
    assert subnet.subnet_pool_id == made.id
    assert len(subnetpools_named(neutron, "kuryrPool-10.194.0.0/24")) == 1


def test_overlapping_subnets_of_kuryr_networks_are_refused_by_name(
        stack, docker, neutron, make_network, unique):
    make_network("--subnet", "10.195.0.0/16")
    refused = docker.run("network", "create", "-d", "kuryr", "--ipam-driver", "kuryr",
                         "--subnet", "10.195.7.0/24", f"kn-{unique}-overlap", check=False)
    assert refused.returncode != 0
    assert "10.195.7.0/24 overlaps subnet 10.195.0.0/16" in refused.stderr, refused.stderr
    # Nothing half-made: no network, no pool for the refused CIDR.
    assert subnetpools_named(neutron, "kuryrPool-10.195.7.0/24") == []
    assert f"kn-{unique}-overlap" not in docker.out("network", "ls", "--format", "{{.Name}}")


def test_networks_docker_asks_kuryr_to_place_come_from_the_default_pool(
        stack, docker, neutron, make_network):
    name = make_network()
    (subnet,) = neutron.api.subnets(network_id=neutron_net_of(neutron, docker, name).id)
    (default,) = subnetpools_named(neutron, "kuryr")
    assert subnet.subnet_pool_id == default.id


# -- 3. pre-created ports on two adopted networks with one CIDR ----------------------------
def test_precreated_ports_with_one_address_on_two_networks_of_one_cidr(
        stack, docker, neutron, make_network, cleanup, unique):
    """Each container gets its own network's pre-created port (same id, same MAC);
    both ports survive, unbound and ownerless."""
    cidr, address = "10.196.0.0/24", "10.196.0.50"
    ports, docker_nets = {}, {}
    for label in "AB":
        net = neutron.api.create_network(name=f"pre-{label}-{unique}")
        cleanup(lambda net=net: helpers.delete_network(neutron, net.id))
        subnet = neutron.api.create_subnet(network_id=net.id, ip_version=4, cidr=cidr,
                                           is_dhcp_enabled=False, name=f"pre-{label}-{unique}")
        ports[label] = neutron.api.create_port(
            network_id=net.id, name=f"user-{label}-{unique}",
            fixed_ips=[{"subnet_id": subnet.id, "ip_address": address}])
        docker_nets[label] = make_network("--subnet", cidr, "-o", f"neutron.net.uuid={net.id}")
    containers = {}
    for label in "AB":
        containers[label] = f"kc-{unique}-{label}"
        cleanup(lambda c=containers[label]: docker.run("rm", "-f", c, check=False))
        docker.run("run", "-d", "--name", containers[label], "--net", docker_nets[label],
                   "--ip", address, "busybox", "sleep", "600")
    for label in "AB":
        got = container_net(docker, containers[label], docker_nets[label])
        port = ports[label]
        assert got["MacAddress"] == port.mac_address, (label, got, port.mac_address)
        used = helpers.wait_until(
            lambda ep=got["EndpointID"]: list(neutron.api.ports(device_id=ep)), 10) or []
        assert [p.id for p in used] == [port.id], label
    for label in "AB":
        docker.run("rm", "-f", containers[label])

    def given_back() -> bool:
        now = [neutron.api.get_port(ports[label].id) for label in "AB"]
        return all(not (p.device_owner or p.device_id or p.binding_host_id) for p in now)

    assert helpers.wait_until(given_back, 10), [neutron.api.get_port(p.id) for p in ports.values()]


# -- 4. exactly one port per container ---------------------------------------------------
def test_pool_size_zero_gives_one_neutron_port_per_container(
        stack, docker, neutron, make_network, run_container):
    name = make_network("--subnet", "10.197.0.0/24", "-o", "kuryr.pool.size=0")
    net = neutron_net_of(neutron, docker, name)
    containers = [run_container(name) for _ in range(3)]
    endpoints = {container_net(docker, c, name)["EndpointID"] for c in containers}

    def footprint():
        ports = [p for p in neutron.api.ports(network_id=net.id)
                 if not p.device_owner.startswith("network:")]  # Neutron's own (metadata)
        return ports if {p.device_id for p in ports} == endpoints else None

    ports = helpers.wait_until(footprint, 10)
    assert ports, [(p.name, p.device_owner, p.device_id)
                   for p in neutron.api.ports(network_id=net.id)]
    assert len(ports) == 3
    assert {p.device_owner for p in ports} == {marks.DEVICE_OWNER}


def test_pool_ports_are_recognisable_by_name_and_owner(stack, docker, neutron, make_network,
                                                      run_container):
    name = make_network("--subnet", "10.198.0.0/24", "-o", "kuryr.pool.size=2")
    net = neutron_net_of(neutron, docker, name)
    container = run_container(name)
    endpoint = container_net(docker, container, name)["EndpointID"]

    def settled():
        ports = [p for p in neutron.api.ports(network_id=net.id)
                 if not p.device_owner.startswith("network:")]
        pooled = [p for p in ports if p.device_owner == marks.POOL_DEVICE_OWNER]
        used = [p for p in ports if p.device_id == endpoint]
        return (pooled, used) if len(pooled) == 2 and len(used) == 1 else None

    got = helpers.wait_until(settled, 15)
    assert got, [(p.name, p.device_owner) for p in neutron.api.ports(network_id=net.id)]
    pooled, (used,) = got
    assert {p.name for p in pooled} == {marks.POOL_PORT_NAME}
    assert (used.name, used.device_owner) == (marks.container_port_name(endpoint),
                                              marks.DEVICE_OWNER)


# -- 6. container names in Neutron DNS ------------------------------------------------------
def test_a_containers_name_resolves_through_neutron_dns_and_follows_renames(
        stack, docker, neutron, ovs, make_network, cleanup, unique):
    """Something on the network that is not a container (a namespace plugged as a
    Neutron port, as a VM would be) asks OVN's DNS responder for the container's
    name and gets its address; after `docker rename` the new name does, and after
    `docker rm` no name does."""
    name = make_network("--subnet", "10.203.0.0/24", "--gateway", "10.203.0.1")
    net = neutron_net_of(neutron, docker, name)
    container = f"Web_{unique}.1"  # Docker allows what a DNS label does not
    label = f"web-{unique}-1"
    cleanup(lambda: docker.run("rm", "-f", container, check=False))
    docker.run("run", "-d", "--name", container, "--net", name, "busybox", "sleep", "600")
    address = container_net(docker, container, name)["IPAddress"]
    port = neutron.api.create_port(network_id=net.id, binding_host_id=stack.host,
                                   device_owner="compute:kuryr-test")
    cleanup(lambda: neutron.api.delete_port(port.id, ignore_missing=True))
    ns = helpers.make_netns(f"dns-{unique}", cleanup)
    helpers.plug_port_into_netns(neutron, ovs, port, ns, cleanup, mtu=net.mtu)
    # The resolver the namespace asks is the gateway address, as a VM's would be
    # the router's; no router here, so its MAC is given: OVN's responder answers
    # any DNS query on the network before it is forwarded anywhere.
    subprocess.run(["ip", "netns", "exec", ns, "ip", "neigh", "replace", "10.203.0.1",
                    "lladdr", "02:00:00:00:02:03", "dev", "eth0", "nud", "permanent"],
                   check=True)

    def resolves(host: str) -> list[str]:
        return helpers.resolve_a(ns, "10.203.0.1", host)

    got = helpers.wait_until(lambda: resolves(label), 20)
    endpoint = container_net(docker, container, name)["EndpointID"]
    ports = [p for p in neutron.api.ports(network_id=net.id) if p.device_id == endpoint]
    assert got == [address], (f"{label} -> {got}; its port's dns_name: "
                              f"{[p.dns_name for p in ports]}")
    assert helpers.resolve_a(ns, "10.203.0.1", f"{label}.kuryr.local") == [address]

    renamed, new_label = f"db-{unique}", f"db-{unique}"
    docker.run("rename", container, renamed)
    cleanup(lambda: docker.run("rm", "-f", renamed, check=False))
    assert helpers.wait_until(lambda: resolves(new_label) == [address], 20), \
        resolves(new_label)
    assert helpers.wait_until(lambda: resolves(label) == [], 20), resolves(label)
    docker.run("rm", "-f", renamed)
    assert helpers.wait_until(lambda: resolves(new_label) == [], 20), resolves(new_label)

"""kuryr-libnetwork's Neutron layout (issue 11): kuryrPool-<cidr> subnetpools,
subnet = --ip-range on adopted networks, overlaps refused between Kuryr's own
networks.  Over the fake Neutron; the real one is in
tests/integration/test_compat.py."""

from __future__ import annotations

import ipaddress

import pytest

from kuryr import errors
from kuryr.core.naming import dns_label
from kuryr.libnetwork import models
from kuryr.neutron import marks

from .test_core import driver, wait_for  # noqa: F401 - the fixture


def pools_named(d, name: str) -> list:
    return [p for p in d.neutron.subnetpools_.values() if p.name == name]


def test_a_subnet_gets_its_kuryrpool_and_release_removes_it(driver):  # noqa: F811
    d = driver()
    docker_id, (pool_id,) = d.create_network(("10.81.0.0/16", "10.81.5.0/24"))
    (pool,) = pools_named(d, "kuryrPool-10.81.0.0/16")
    (subnet,) = d.state.network(docker_id).subnets
    assert (subnet.cidr, subnet.subnet_pool_id) == ("10.81.0.0/16", pool.id)
    assert subnet.allocation_pools == (("10.81.5.0", "10.81.5.255"),)
    # dockerd's order: ReleasePool, then DeleteNetwork
    d.ipam.release_pool(models.ReleasePoolRequest(PoolID=pool_id))
    assert pools_named(d, "kuryrPool-10.81.0.0/16"), "its subnet is still in it"
    d.networks.delete(models.NetworkRequest(NetworkID=docker_id))
    assert not pools_named(d, "kuryrPool-10.81.0.0/16")


def test_a_failed_create_leaves_no_kuryrpool(driver):  # noqa: F811
    d = driver()
    got = d.ipam.request_pool(models.RequestPoolRequest(Pool="10.90.0.0/24", V6=False))
    assert pools_named(d, "kuryrPool-10.90.0.0/24")
    d.ipam.release_pool(models.ReleasePoolRequest(PoolID=got.PoolID))
    assert not pools_named(d, "kuryrPool-10.90.0.0/24")


def test_an_existing_kuryrpool_is_found_by_name_not_made_twice(driver):  # noqa: F811
    d = driver()
    made = d.neutron.create_subnetpool("kuryrPool-10.82.0.0/24", ["10.82.0.0/24"], 24, 24, "")
    _docker_id, (pool_id,) = d.create_network(("10.82.0.0/24", ""))
    assert marks.parse_pool_id(pool_id).subnetpool == made.id
    assert len(pools_named(d, "kuryrPool-10.82.0.0/24")) == 1


@pytest.mark.parametrize(("first", "second"), [
    ("10.83.0.0/24", "10.83.0.0/24"),
    ("10.84.0.0/16", "10.84.7.0/24"),
    ("10.85.3.0/24", "10.85.0.0/16"),
])
def test_overlapping_subnets_of_kuryr_networks_are_refused(driver, first, second):  # noqa: F811
    d = driver()
    d.create_network((first, ""))
    with pytest.raises(errors.Conflict, match=f"subnet {second} overlaps subnet {first}"):
        d.create_network((second, ""))


def test_a_network_docker_asks_kuryr_to_choose_avoids_users_subnets(driver):  # noqa: F811
    d = driver()
    d.create_network(("10.10.0.0/24", ""))  # the first /24 of the default prefix
    got = d.ipam.request_pool(models.RequestPoolRequest(Pool="", V6=False))
    assert got.Pool == "10.10.1.0/24"


def test_an_adopted_subnet_equal_to_the_ip_range_is_used_as_is(driver):  # noqa: F811
    """kuryr-libnetwork made its subnet = --ip-range: adopting that network with
    --subnet 10.81.0.0/16 --ip-range 10.81.0.0/24 takes the /24 subnet."""
    d = driver()
    net = d.neutron.add_network("N")
    existing = d.neutron.add_subnet(net.id, "10.86.0.0/24", "10.86.0.1")
    docker_id, (pool_id,) = d.create_network(("10.86.0.0/16", "10.86.0.0/24"),
                                             options={"neutron.net.name": "N"})
    assert d.state.network(docker_id).subnets == (existing,)
    got = d.ipam.request_address(models.RequestAddressRequest(PoolID=pool_id, Address=""))
    address, prefix = got.Address.split("/")
    assert prefix == "24", "the container's prefix is the subnet's"
    assert ipaddress.ip_address(address) in ipaddress.ip_network("10.86.0.0/24")
    endpoint = d.create_endpoint(docker_id, address)
    assert d.port_of(endpoint).network_id == net.id
    assert len(d.neutron.subnets_) == 1, "no second subnet was made"


def test_adopted_networks_may_share_a_cidr_with_a_kuryr_network(driver):  # noqa: F811
    """Overlaps are refused only for subnets Kuryr makes: an adopted network's
    own subnet is the user's business."""
    d = driver()
    d.create_network(("10.87.0.0/24", ""))
    net = d.neutron.add_network("M")
    d.neutron.add_subnet(net.id, "10.87.0.0/24", "10.87.0.1")
    d.create_network(("10.87.0.0/24", ""), options={"neutron.net.uuid": net.id})


def test_pool_ports_are_named_as_such_and_containers_ports_after_their_endpoint(
        driver):  # noqa: F811
    d = driver(pool_size=1)
    docker_id, (pool_id,) = d.create_network(("10.88.0.0/24", ""))
    wait_for(lambda: len(d.pool.held()) == 1)
    (ready,) = d.neutron.ports_.values()
    assert (ready.name, ready.device_owner) == (marks.POOL_PORT_NAME, marks.POOL_DEVICE_OWNER)
    endpoint, _ip = d.start(docker_id, pool_id)
    d.settle()
    taken = d.port_of(endpoint)
    assert taken.id == ready.id
    assert (taken.name, taken.device_owner) == (marks.container_port_name(endpoint),
                                                marks.DEVICE_OWNER)
    d.stop(docker_id, endpoint)
    d.settle()
    back = d.neutron.get_port(ready.id)
    assert (back.name, back.device_owner, back.device_id) == (
        marks.POOL_PORT_NAME, marks.POOL_DEVICE_OWNER, "")


def test_a_users_precreated_port_keeps_its_name(driver):  # noqa: F811
    d = driver()
    net = d.neutron.add_network("U")
    d.neutron.add_subnet(net.id, "10.89.0.0/24", "10.89.0.1")
    user_port = d.neutron.add_port(net.id, "10.89.0.9", name="my-port")
    docker_id, (pool_id,) = d.create_network(("10.89.0.0/24", ""),
                                             options={"neutron.net.uuid": net.id})
    endpoint, _ip = d.start(docker_id, pool_id, "10.89.0.9")
    d.settle()
    assert d.port_of(endpoint).id == user_port.id
    assert d.port_of(endpoint).name == "my-port"


# -- networks kuryr-libnetwork made: dockerd keeps its pool ids (subnetpool UUIDs) ------
def anchor_network(d, cidr: str, pool_name: str) -> tuple[str, str, str]:
    """What kuryr-libnetwork leaves: a tagged network, a kuryr-subnet-<cidr> subnet in
    the subnetpool ``pool_name``; returns (docker id, pool id as dockerd has it,
    Neutron network id)."""
    pool = d.neutron.find_subnetpool(pool_name) or d.neutron.create_subnetpool(
        pool_name, [cidr], 24, 24, "")
    docker_id = d.new_id()
    net = d.neutron.add_network(marks.network_name(docker_id),
                                tags=tuple(marks.network_tags(docker_id)))
    d.neutron.create_subnet(net.id, cidr, marks.subnet_name(cidr), None, False,
                            subnet_pool_id=pool.id)
    return docker_id, pool.id, net.id


def test_a_migrated_network_takes_new_containers_and_cleans_up(driver):  # noqa: F811
    d = driver()
    docker_id, pool_uuid, net_id = anchor_network(d, "10.92.0.0/24", "kuryrPool-10.92.0.0/24")
    got = d.ipam.request_address(models.RequestAddressRequest(PoolID=pool_uuid, Address=""))
    address = got.Address.split("/")[0]
    assert ipaddress.ip_address(address) in ipaddress.ip_network("10.92.0.0/24")
    endpoint = d.create_endpoint(docker_id, address)
    assert d.port_of(endpoint).network_id == net_id
    d.stop(docker_id, endpoint)
    d.ipam.release_address(models.ReleaseAddressRequest(PoolID=pool_uuid, Address=address))
    d.settle()
    d.ipam.release_pool(models.ReleasePoolRequest(PoolID=pool_uuid))
    d.networks.delete(models.NetworkRequest(NetworkID=docker_id))
    assert not d.neutron.ports_
    assert not d.neutron.subnets_
    assert net_id not in d.neutron.networks
    assert not pools_named(d, "kuryrPool-10.92.0.0/24")


def test_a_default_pool_shared_by_migrated_networks_needs_the_address(driver):  # noqa: F811
    d = driver()
    d.neutron.create_subnetpool("kuryr", ["10.0.0.0/8"], 24, 8, "")
    _a, pool_uuid, _net = anchor_network(d, "10.93.0.0/24", "kuryr")
    anchor_network(d, "10.93.1.0/24", "kuryr")
    with pytest.raises(errors.Conflict, match="cannot be told"):
        d.ipam.request_address(models.RequestAddressRequest(PoolID=pool_uuid, Address=""))
    got = d.ipam.request_address(models.RequestAddressRequest(PoolID=pool_uuid,
                                                              Address="10.93.1.7"))
    assert got.Address == "10.93.1.7/24"
    d.ipam.release_pool(models.ReleasePoolRequest(PoolID=pool_uuid))
    assert pools_named(d, "kuryr"), "a default pool is never removed"


# -- container names in Neutron DNS ------------------------------------------------------
@pytest.mark.parametrize(("name", "label"), [
    ("web", "web"), ("/Web_Server.1", "web-server-1"), ("a__b", "a-b"),
    ("_x_", "x"), ("x" * 70, "x" * 63), ("---", ""),
])
def test_container_names_become_dns_labels(name, label):
    assert dns_label(name) == label


class HeldNames:
    """A Naming whose names the test hands out."""

    def __init__(self) -> None:
        self.waiting: dict[str, object] = {}

    def when_named(self, endpoint_id, write) -> None:
        self.waiting[endpoint_id] = write

    def name(self, endpoint_id: str, label: str) -> None:
        self.waiting.pop(endpoint_id)(label)


def test_the_name_rides_in_the_record_write(driver):  # noqa: F811
    names = HeldNames()
    d = driver(naming=names)
    docker_id, (pool_id,) = d.create_network(("10.94.0.0/24", ""))
    endpoint, _ip = d.start(docker_id, pool_id)
    d.settle()
    port = d.port_of(endpoint)
    assert port.device_id == "", "recorded before its name came"
    writes = d.neutron.calls["update_port"]
    names.name(endpoint, "web-1")
    d.settle()
    port = d.port_of(endpoint)
    assert (port.device_id, port.dns_name) == (endpoint, "web-1")
    assert d.neutron.calls["update_port"] == writes + 1, "one PUT for both"
    d.ports.name_endpoint(endpoint, "renamed")
    d.settle()
    assert d.port_of(endpoint).dns_name == "renamed"


def test_a_name_that_comes_after_the_endpoint_went_writes_nothing(driver):  # noqa: F811
    names = HeldNames()
    d = driver(naming=names, pool_size=1)
    docker_id, (pool_id,) = d.create_network(("10.95.0.0/24", ""))
    wait_for(lambda: len(d.pool.held()) == 1)
    first, _ip = d.start(docker_id, pool_id)
    port_id = d.port_of(first).id
    d.stop(docker_id, first)  # back to the pool
    d.settle()
    names.name(first, "late")
    d.settle()
    port = d.neutron.get_port(port_id)
    assert (port.device_id, port.dns_name) == ("", ""), "a late name must not land"


def test_a_kuryrpool_taken_again_meanwhile_does_not_fail_network_rm(driver):  # noqa: F811
    """Between DeleteNetwork's "is it empty?" and its DELETE, another host's Kuryr
    made a subnet in the same kuryrPool: Neutron refuses; the rm still succeeds."""
    d = driver()
    docker_id, _pools = d.create_network(("10.96.0.0/24", ""))
    refuse = d.neutron.delete_subnetpool

    def taken_meanwhile(pool_id: str) -> None:
        raise errors.InvalidInput(f"delete subnetpool {pool_id}: Subnet pool has existing "
                                  "allocations")

    d.neutron.delete_subnetpool = taken_meanwhile  # type: ignore[method-assign]
    d.networks.delete(models.NetworkRequest(NetworkID=docker_id))
    assert d.state.network(docker_id) is None
    d.neutron.delete_subnetpool = refuse  # type: ignore[method-assign]
    assert pools_named(d, "kuryrPool-10.96.0.0/24"), "kept for whoever took it"


def knows(d, *docker_ids: str) -> None:
    """This driver's dockerd has exactly these networks."""
    import dataclasses

    d.networks.settings = dataclasses.replace(d.networks.settings,
                                              docker_networks=lambda: set(docker_ids))


def test_the_dockerds_of_two_hosts_share_one_adopted_network(driver):  # noqa: F811
    """Multi-host and nested: each dockerd adopts the Neutron network with its own
    Docker network; each finds its own again, and removing one keeps the other's."""
    import itertools

    a = driver()
    b = driver(neutron=a.neutron)
    b._ids = itertools.count(0xB0000000000000000000000000000000B)  # another dockerd's ids
    net = a.neutron.add_network("shared")
    a.neutron.add_subnet(net.id, "10.90.0.0/24", "10.90.0.1")
    on_a, (_pool_a,) = a.create_network(("10.90.0.0/24", ""), options={"neutron.net.uuid": net.id})
    knows(a, on_a)
    knows(b)  # B's dockerd has no network on it yet
    on_b, (_pool_b,) = b.create_network(("10.90.0.0/24", ""), options={"neutron.net.uuid": net.id})
    knows(b, on_b)
    assert set(marks.docker_network_ids_from_tags(list(a.neutron.networks[net.id].tags))) >= {
        on_a, on_b}
    restarted = driver(neutron=a.neutron)  # B's Kuryr after a restart: nothing in memory
    knows(restarted, on_b)
    record = restarted.networks.by_neutron_id(net.id)  # by the tags, and B's dockerd
    assert record is not None
    assert record.docker_id == on_b
    a.networks.delete(models.NetworkRequest(NetworkID=on_a))
    left = a.neutron.networks[net.id].tags
    assert set(marks.network_tags(on_b)) <= set(left)
    assert not set(marks.network_tags(on_a)) & set(left)


def test_one_dockerd_adopts_a_neutron_network_once(driver):  # noqa: F811
    d = driver()
    net = d.neutron.add_network("once")
    d.neutron.add_subnet(net.id, "10.91.0.0/24", "10.91.0.1")
    first, _ = d.create_network(("10.91.0.0/24", ""), options={"neutron.net.uuid": net.id})
    knows(d, first)
    with pytest.raises(errors.Conflict, match="already used by Docker network"):
        d.create_network(("10.91.0.0/24", ""), options={"neutron.net.uuid": net.id})

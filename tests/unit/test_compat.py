"""kuryr-libnetwork's Neutron layout (issue 11): kuryrPool-<cidr> subnetpools,
subnet = --ip-range on adopted networks, overlaps refused between Kuryr's own
networks.  Over the fake Neutron; the real one is in
tests/integration/test_compat.py."""

from __future__ import annotations

import ipaddress

import pytest

from kuryr import errors
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

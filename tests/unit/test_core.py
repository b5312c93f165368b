"""The core's decisions against fakes at the facade: ranges, same-CIDR adoption,
ownership, generations (late releases), dual-stack pairing, pool restore and
the network delete's conflict path.  Each defect of issue 10 has a test here
that failed on the earlier code; the real-stack versions are in
tests/integration/test_core_defects.py."""

from __future__ import annotations

import ipaddress
import threading
import time
import tracemalloc

import pytest

from kuryr import errors
from kuryr.core import ownership, ranges
from kuryr.core.background import Background
from kuryr.core.naming import Naming, NoNames
from kuryr.core.placement import AddressPairs, OnHost, Placement
from kuryr.core.pool import PortPool
from kuryr.core.ports import PortLifecycle, Settings
from kuryr.core.state import State
from kuryr.libnetwork import models
from kuryr.libnetwork.endpoints import Endpoints
from kuryr.libnetwork.floating import FloatingPublisher
from kuryr.libnetwork.ipam import DefaultPools, Ipam
from kuryr.libnetwork.networks import Networks, NetworkSettings
from kuryr.libnetwork.ports import Publishing
from kuryr.neutron import marks
from kuryr.neutron.types import Port, SubnetPool

from .fakes import FakeBinder, FakeNeutron, kuryr_ports

HOST = "host-a"


class Driver:
    """Kuryr's Docker driver over the fakes, built as the server builds it."""

    def __init__(self, pool_size: int = 0, neutron: FakeNeutron | None = None,
                 binder: FakeBinder | None = None, naming: Naming | None = None,
                 owners: marks.Owners = marks.DOCKER_OWNERS,
                 placement: Placement | None = None) -> None:
        self.neutron = neutron or FakeNeutron()
        self.binder = binder or FakeBinder()
        self.state = State()
        self.background = Background()
        self.background.start()
        self.pool = PortPool(self.neutron, self.binder, self.background, HOST, pool_size,
                             "br-int", owners=owners, placement=placement)
        self.pool.start()
        self.ports = PortLifecycle(self.neutron, self.binder, self.pool, self.background,
                                   self.state, Settings(host=HOST, default_bridge="br-int",
                                                        owners=owners, plug_timeout=1,
                                                        dns_enabled=naming is not None,
                                                        placement=placement),
                                   naming or NoNames())
        floating = FloatingPublisher(self.neutron, HOST, "", "kuryr-publish")
        self.networks = Networks(self.neutron, self.state, self.pool, self.background,
                                 self.binder, floating,
                                 NetworkSettings(HOST, "br-int", placement=placement))
        pools = {4: SubnetPool("p4", "kuryr", ("0.0.0.0/0",), 24),
                 6: SubnetPool("p6", "kuryr6", ("::/0",), 64)}
        self.ipam = Ipam(self.neutron, self.state, self.networks, self.ports,
                         DefaultPools(pools, {4: "10.10.0.0/16", 6: "fd00::/48"}),
                         models.AddressSpaces(LocalDefaultAddressSpace="l",
                                              GlobalDefaultAddressSpace="g"))
        self.endpoints = Endpoints(self.networks, self.ports,
                                   Publishing(self.neutron, None, floating, None, HOST, True),
                                   "eth", "/var/run/docker/netns")
        self._ids = iter(range(1, 10_000))

    def close(self) -> None:
        self.settle()
        self.pool.stop()
        self.background.stop(5)
        self.ports.stop()

    def settle(self) -> None:
        assert self.background.wait_idle(5)
        self.ports._unplugger.submit(lambda: None).result()

    def new_id(self) -> str:
        return f"{next(self._ids):064x}"

    # -- Docker's call sequences --------------------------------------------------------
    def create_network(self, *pools: tuple[str, str], ipv6: bool = False,
                       options: dict[str, str] | None = None) -> tuple[str, list[str]]:
        """pools: (cidr, ip-range); returns (docker id, pool ids)."""
        pool_ids, data4, data6 = [], [], []
        for cidr, ip_range in pools:
            v6 = ipaddress.ip_network(cidr).version == 6
            got = self.ipam.request_pool(models.RequestPoolRequest(
                Pool=cidr, SubPool=ip_range, V6=v6))
            gateway = self.ipam.request_address(models.RequestAddressRequest(
                PoolID=got.PoolID, Options={"RequestAddressType": models.GATEWAY_REQUEST}))
            pool_ids.append(got.PoolID)
            (data6 if v6 else data4).append(models.IPAMData(Pool=cidr, Gateway=gateway.Address))
        docker_id = self.new_id()
        self.networks.create(models.CreateNetworkRequest(
            NetworkID=docker_id, IPv4Data=data4, IPv6Data=data6,
            Options={models.GENERIC_OPTIONS: options or {},
                     models.ENABLE_IPV6_OPTION: ipv6}))
        return docker_id, pool_ids

    def request(self, pool_id: str, address: str = "") -> str:
        return self.ipam.request_address(models.RequestAddressRequest(
            PoolID=pool_id, Address=address)).Address.split("/")[0]

    def release(self, pool_id: str, address: str) -> None:
        self.ipam.release_address(models.ReleaseAddressRequest(PoolID=pool_id,
                                                               Address=address))

    def create_endpoint(self, net: str, v4: str = "", v6: str = "",
                        prefix4: int = 24, prefix6: int = 64,
                        options: dict | None = None) -> str:
        endpoint = self.new_id()
        self.endpoints.create(models.CreateEndpointRequest(
            NetworkID=net, EndpointID=endpoint, Interface=models.EndpointInterface(
                Address=f"{v4}/{prefix4}" if v4 else "",
                AddressIPv6=f"{v6}/{prefix6}" if v6 else ""), Options=options or {}))
        return endpoint

    def start(self, net: str, pool_id: str, address: str = "",
              options: dict | None = None) -> tuple[str, str]:
        """RequestAddress, CreateEndpoint, Join; the container takes the interface."""
        ip = self.request(pool_id, address)
        endpoint = self.create_endpoint(net, ip, options=options)
        self.endpoints.join(models.JoinRequest(NetworkID=net, EndpointID=endpoint,
                                               SandboxKey="/var/run/docker/netns/x"))
        self.binder.container_takes(self.port_of(endpoint).id)
        return endpoint, ip

    def stop(self, net: str, endpoint: str) -> None:
        """Revoke, Leave, DeleteEndpoint (ReleaseAddress is the caller's: it may come late)."""
        self.binder.container_leaves(self.port_of(endpoint).id)
        request = models.EndpointRequest(NetworkID=net, EndpointID=endpoint)
        self.endpoints.revoke_external(request)
        self.endpoints.delete(request)

    def port_of(self, endpoint: str) -> Port:
        lease = self.state.endpoint(endpoint)
        assert lease is not None
        return self.neutron.get_port(lease.port.id)


@pytest.fixture
def driver():
    made = []

    def make(**kwargs: object) -> Driver:
        made.append(Driver(**kwargs))  # type: ignore[arg-type]
        return made[-1]

    yield make
    for d in made:
        d.close()


def wait_for(predicate, timeout: float = 5.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


# -- 1. ranges cost O(1) ---------------------------------------------------------------
def test_ip_range_of_a_huge_ipv6_subnet_costs_nothing():
    tracemalloc.start()
    started = time.monotonic()
    assert ranges.allocation_pools("fd44::/64", "fd44::/64", "fd44::1") == [
        ("fd44::2", "fd44::ffff:ffff:ffff:ffff")]
    assert ranges.allocation_pools("fd44::/64", "fd44::/104", None) == [
        ("fd44::1", "fd44::ff:ffff")]
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert time.monotonic() - started < 0.1
    assert peak < 100_000


@pytest.mark.parametrize(("subnet", "ip_range", "gateway", "pools"), [
    ("10.44.0.0/16", "10.44.0.0/24", "10.44.0.1", [("10.44.0.2", "10.44.0.255")]),
    ("10.44.0.0/16", "10.44.5.0/24", "10.44.0.1", [("10.44.5.0", "10.44.5.255")]),
    ("10.44.0.0/24", "10.44.0.0/24", "10.44.0.1", [("10.44.0.2", "10.44.0.254")]),
    ("10.44.0.0/24", "10.44.0.0/25", "10.44.0.9",
     [("10.44.0.1", "10.44.0.8"), ("10.44.0.10", "10.44.0.127")]),
])
def test_ip_range_as_allocation_pools(subnet, ip_range, gateway, pools):
    assert ranges.allocation_pools(subnet, ip_range, gateway) == pools


def test_ip_range_outside_the_subnet_is_refused():
    with pytest.raises(ValueError, match="not inside"):
        ranges.allocation_pools("10.0.0.0/24", "10.0.1.0/24", None)


def test_dual_stack_network_with_ranges_is_created_at_once(driver):
    d = driver()
    started = time.monotonic()
    net, (_pool4, _pool6) = d.create_network(("10.44.0.0/16", "10.44.0.0/24"),
                                           ("fd44::/64", "fd44::/64"), ipv6=True)
    assert time.monotonic() - started < 1
    record = d.state.network(net)
    assert record is not None
    by_version = {s.ip_version: s for s in record.subnets}
    assert by_version[4].allocation_pools == (("10.44.0.2", "10.44.0.255"),)
    assert by_version[6].allocation_pools == (("fd44::2", "fd44::ffff:ffff:ffff:ffff"),)


# -- 2. two adopted networks with one CIDR ----------------------------------------------
def test_adopted_networks_sharing_a_cidr_keep_their_own_containers(driver):
    d = driver()
    nets = []
    for name in ("A", "B"):
        neutron_net = d.neutron.add_network(name)
        d.neutron.add_subnet(neutron_net.id, "10.72.0.0/24", "10.72.0.1")
        docker_id, (pool_id,) = d.create_network(
            ("10.72.0.0/24", ""), options={"neutron.net.uuid": neutron_net.id})
        nets.append((neutron_net.id, docker_id, pool_id))
    assert nets[0][2] != nets[1][2], "pool ids must differ"
    for neutron_id, docker_id, pool_id in nets * 2:
        endpoint, _ = d.start(docker_id, pool_id)
        assert d.port_of(endpoint).network_id == neutron_id


def test_pool_ids_of_earlier_versions_still_resolve_when_unambiguous(driver):
    d = driver()
    _docker_id, (_pool_id,) = d.create_network(("10.73.0.0/24", ""))
    legacy = str(marks.PoolId("10.73.0.0/24"))
    ip = d.request(legacy)
    assert ipaddress.ip_address(ip) in ipaddress.ip_network("10.73.0.0/24")
    d.release(legacy, ip)


def test_a_restarted_kuryr_finds_the_network_by_the_pool_token(driver):
    d = driver()
    docker_id, (pool_id,) = d.create_network(("10.74.0.0/24", ""))
    fresh = driver(neutron=d.neutron)  # a new process: nothing cached
    ip = fresh.request(pool_id)
    endpoint = fresh.create_endpoint(docker_id, ip)
    assert fresh.port_of(endpoint).network_id == d.state.network(docker_id).neutron_id


# -- 3. ownership -----------------------------------------------------------------------
@pytest.mark.parametrize(("owner", "device", "host", "needle"), [
    ("compute:nova", "vm-1", "compute-7", "compute:nova"),
    ("network:distributed", "ovnmeta-x", "", "Neutron's own"),
    ("network:dhcp", "dhcp-x", "", "Neutron's own"),
    ("compute:kuryr", "ep-other", "host-b", "another host"),
    ("compute:kuryr", "ep-other", HOST, "another endpoint"),
    ("", "", "compute-7", "bound elsewhere"),
])
def test_claim_refuses_ports_that_are_not_kuryrs(owner, device, host, needle):
    port = Port(id="p1", network_id="n", mac_address="m", device_owner=owner,
                device_id=device, binding_host_id=host)
    with pytest.raises(errors.Conflict, match=needle) as caught:
        ownership.claim(port, marks.DOCKER_OWNERS, OnHost(HOST), "ep-mine")
    assert "p1" in str(caught.value)


def test_a_vms_port_holding_the_address_is_never_taken(driver):
    d = driver()
    neutron_net = d.neutron.add_network("tenant")
    d.neutron.add_subnet(neutron_net.id, "10.75.0.0/24", "10.75.0.1")
    vm = d.neutron.add_port(neutron_net.id, "10.75.0.50", device_owner="compute:nova",
                            device_id="vm-1", binding_host_id="compute-7")
    docker_id = d.new_id()  # Docker's own IPAM: no pools for Kuryr's IPAM
    d.networks.create(models.CreateNetworkRequest(
        NetworkID=docker_id, IPv4Data=[models.IPAMData(Pool="10.75.0.0/24")],
        Options={models.GENERIC_OPTIONS: {"neutron.net.uuid": neutron_net.id}}))
    with pytest.raises(errors.Conflict, match=rf"{vm.id}.*compute:nova"):
        d.create_endpoint(docker_id, "10.75.0.50")
    d.settle()
    assert d.neutron.get_port(vm.id) == vm, "the VM's port was changed"
    assert kuryr_ports(d.neutron) == []


def adopted_with_user_port(d: Driver, cidr: str, address: str) -> tuple[Port, str, str]:
    """A user's network with an owner-less port on ``address``, adopted by Docker
    with Kuryr's IPAM: (the port, Docker network id, pool id)."""
    neutron_net = d.neutron.add_network("tenant")
    d.neutron.add_subnet(neutron_net.id, cidr, str(next(ipaddress.ip_network(cidr).hosts())))
    mine = d.neutron.add_port(neutron_net.id, address)
    docker_id, (pool_id,) = d.create_network(
        (cidr, ""), options={"neutron.net.uuid": neutron_net.id})
    return mine, docker_id, pool_id


def test_a_user_precreated_port_is_adopted_and_given_back(driver):
    d = driver()
    mine, docker_id, pool_id = adopted_with_user_port(d, "10.76.0.0/24", "10.76.0.60")
    endpoint, _ = d.start(docker_id, pool_id, "10.76.0.60")
    port = d.port_of(endpoint)
    assert port.id == mine.id
    assert port.mac_address == mine.mac_address
    assert marks.PORT_EXISTING_TAG in port.tags
    assert port.binding_host_id == HOST
    d.stop(docker_id, endpoint)
    d.release(pool_id, "10.76.0.60")
    d.settle()
    back = d.neutron.get_port(mine.id)
    assert (back.device_owner, back.device_id, back.binding_host_id) == ("", "", "")


def test_a_precreated_port_changed_meanwhile_is_not_taken(driver):
    d = driver()
    mine, _docker_id, pool_id = adopted_with_user_port(d, "10.77.0.0/24", "10.77.0.61")
    real_tags = d.neutron.set_port_tags

    def racing_tag(port_id: str, tags: list[str]) -> None:
        real_tags(port_id, tags)
        if marks.PORT_EXISTING_TAG in tags:  # nova binds it right then
            d.neutron.update_port(port_id, device_owner="compute:nova")
    d.neutron.set_port_tags = racing_tag  # type: ignore[method-assign]
    with pytest.raises(errors.Conflict, match="changed while"):
        d.request(pool_id, "10.77.0.61")
    port = d.neutron.get_port(mine.id)
    assert marks.PORT_EXISTING_TAG not in port.tags
    assert port.binding_host_id == ""


# -- 4. a late ReleaseAddress never deletes the next container's port -----------------
def test_late_release_after_recycling_keeps_the_next_containers_port(driver):
    d = driver(pool_size=1)
    net, (pool_id,) = d.create_network(("10.78.0.0/24", ""))
    wait_for(lambda: len(d.pool.held()) == 1)
    first, ip = d.start(net, pool_id)
    port = d.port_of(first)
    d.stop(net, first)  # recycled: the port is back in the pool ...
    d.settle()
    second = None
    for _ in range(3):  # ... and the next container takes it (pool order)
        candidate, _ip2 = d.start(net, pool_id)
        if d.port_of(candidate).id == port.id:
            second = candidate
            break
    assert second is not None, "the recycled port was not handed out again"
    d.release(pool_id, ip)  # the first container's release arrives only now
    d.settle()
    assert d.neutron.get_port(port.id).device_id == second


def test_release_of_an_address_that_never_reached_an_endpoint_frees_the_port(driver):
    d = driver()
    _net, (pool_id,) = d.create_network(("10.79.0.0/24", ""))
    ip = d.request(pool_id)
    d.release(pool_id, ip)
    d.settle()
    assert kuryr_ports(d.neutron) == []


# -- 5. dual-stack pairing without blocking -------------------------------------------------
def test_interleaved_dual_stack_requests_end_on_one_port_each(driver):
    d = driver()
    net, (pool4, pool6) = d.create_network(("10.80.0.0/24", ""), ("fd80::/64", ""),
                                           ipv6=True)
    started = time.monotonic()
    a4 = d.request(pool4)
    b4 = d.request(pool4)
    b6 = d.request(pool6)  # B's IPv6 call overtakes A's: it gets A's port's IPv6
    a6 = d.request(pool6)
    assert time.monotonic() - started < 1, "pairing must not block"
    ep_a = d.create_endpoint(net, a4, a6)
    ep_b = d.create_endpoint(net, b4, b6)
    d.settle()
    assert set(d.port_of(ep_a).addresses) == {a4, a6}
    assert set(d.port_of(ep_b).addresses) == {b4, b6}
    assert len(kuryr_ports(d.neutron)) == 2


def test_dual_stack_in_order_costs_one_port_create(driver):
    d = driver()
    net, (pool4, pool6) = d.create_network(("10.81.0.0/24", ""), ("fd81::/64", ""),
                                           ipv6=True)
    d.neutron.calls.clear()
    a4, a6 = d.request(pool4), d.request(pool6)
    endpoint = d.create_endpoint(net, a4, a6)
    d.settle()
    assert set(d.port_of(endpoint).addresses) == {a4, a6}
    assert d.neutron.calls["create_port"] == 1
    assert d.neutron.calls["update_port"] == 1  # the background record of the endpoint


# -- 6. restore after kill -9 ------------------------------------------------------------
def test_restore_never_takes_a_port_an_endpoint_is_using(driver):
    d = driver(pool_size=2)
    net, (pool_id,) = d.create_network(("10.82.0.0/24", ""))
    wait_for(lambda: len(d.pool.held()) == 2)
    ip = d.request(pool_id)
    endpoint = d.create_endpoint(net, ip)  # plugged with the endpoint in OVS ...
    in_use = d.state.endpoint(endpoint).port.id
    d.settle()
    # ... killed before the container took the interface and before Neutron
    # recorded the endpoint: Neutron still says kuryr:pool, no device_id.
    d.neutron.ports_[in_use] = d.neutron.ports_[in_use].__class__(
        **{**d.neutron.ports_[in_use].__dict__, "device_owner": marks.POOL_DEVICE_OWNER,
           "device_id": ""})
    d.settle()
    pooled = [p.id for p in d.neutron.ports_.values()
              if p.device_owner == marks.POOL_DEVICE_OWNER]
    fresh = driver(pool_size=2, neutron=d.neutron, binder=d.binder)
    assert fresh.pool.restore() == len(pooled) - 1
    assert in_use not in fresh.pool.held()


# -- 7. DeleteNetwork's conflict path spares other hosts ------------------------------------
def test_delete_network_conflict_path_deletes_only_this_hosts_unused_ports(driver):
    d = driver()
    net, (_pool_id,) = d.create_network(("10.83.0.0/24", ""))
    neutron_id = d.state.network(net).neutron_id
    theirs = d.neutron.add_port(neutron_id, "10.83.0.70", device_owner=marks.DEVICE_OWNER,
                                device_id="ep-b", binding_host_id="host-b")
    ours = d.neutron.add_port(neutron_id, "10.83.0.71",
                              device_owner=marks.UNBOUND_DEVICE_OWNER, binding_host_id=HOST)
    d.neutron.delete_network_conflicts = 1
    with pytest.raises(errors.Conflict):
        d.networks.delete(models.NetworkRequest(NetworkID=net))
    assert theirs.id in d.neutron.ports_
    assert ours.id not in d.neutron.ports_


def test_an_abandoned_dual_stack_start_is_freed_and_never_pairs(driver, monkeypatch):
    """dockerd drops a start after the IPv4 address when it refuses --ip6 itself:
    no IPv6 call and no release follow.  The next start must pair with its own
    port, and the abandoned one is freed once it is clearly abandoned."""
    from kuryr.core import ports as ports_module

    d = driver()
    net, (pool4, pool6) = d.create_network(("10.84.0.0/24", ""), ("fd84::/64", ""),
                                           ipv6=True)
    d.request(pool4)  # abandoned
    a4, a6 = d.request(pool4), d.request(pool6)
    endpoint = d.create_endpoint(net, a4, a6)
    d.settle()
    assert d.neutron.calls["update_port"] == 1, "no re-pairing PUTs"
    assert set(d.port_of(endpoint).addresses) == {a4, a6}
    monkeypatch.setattr(ports_module, "ABANDONED_AFTER", 0.0)
    b4 = d.request(pool4)  # the next start sweeps the abandoned lease away
    d.settle()
    assert len(kuryr_ports(d.neutron)) == 2  # the endpoint's and b4's
    assert any(b4 in p.addresses for p in kuryr_ports(d.neutron))


def test_endpoints_whose_record_died_with_the_process_are_recorded_again(driver):
    d = driver()
    net, (pool_id,) = d.create_network(("10.85.0.0/24", ""))
    ip = d.request(pool_id)
    endpoint = d.create_endpoint(net, ip)
    d.settle()
    port_id = d.state.endpoint(endpoint).port.id
    d.neutron.update_port(port_id, device_id="", device_owner=marks.UNBOUND_DEVICE_OWNER)
    fresh = driver(neutron=d.neutron, binder=d.binder)
    assert fresh.ports.record_lost_endpoints() == 1
    fresh.settle()
    assert d.neutron.get_port(port_id).device_id == endpoint


def test_the_daemon_stops_what_it_started_in_reverse_even_after_a_failure():
    from kuryr.core.daemon import Daemon

    events: list[str] = []
    daemon = Daemon()
    daemon.start("a", lambda: events.append("start a"), lambda: events.append("stop a"))

    def broken_stop() -> None:
        raise RuntimeError("b will not stop")

    daemon.start("b", lambda: events.append("start b"), broken_stop)
    daemon.start("c", lambda: events.append("start c"), lambda: events.append("stop c"))
    assert daemon.running == ["a", "b", "c"]
    daemon.stop()
    assert events == ["start a", "start b", "start c", "stop c", "stop a"]
    assert daemon.running == []


def test_nested_kuryr_refuses_to_start_without_the_vms_interface():
    from kuryr import config, server

    conf = config.load([], [])
    conf.set_override("port_driver", "nested-vlan")
    with pytest.raises(SystemExit, match=r"\[binding\] link_iface '' is no interface"):
        server.build(conf, neutron=FakeNeutron())  # type: ignore[arg-type]


def test_a_port_on_its_way_back_when_its_network_goes_is_deleted_not_pooled(driver):
    d = driver(pool_size=1)
    net, (pool_id,) = d.create_network(("10.86.0.0/24", ""))
    wait_for(lambda: len(d.pool.held()) == 1)
    endpoint, _ = d.start(net, pool_id)
    port_id = d.port_of(endpoint).id
    record = d.state.network(net)
    d.binder.container_leaves(port_id)
    port = d.port_of(endpoint)
    assert d.pool.accepts(record, port)  # on its way back ...
    back = threading.Timer(0.2, d.pool.take_back, (record, port))
    back.start()
    started = time.monotonic()
    d.pool.drain(record)  # ... when the network goes: the drain waits for it
    assert time.monotonic() - started < 5
    back.join()
    assert port_id not in d.pool.held()
    assert port_id not in d.neutron.ports_


def test_floating_ip_publishing_is_set_up_once_and_no_lock_waits_on_neutron():
    from types import SimpleNamespace

    from kuryr.neutron.types import FloatingIP, Network, Router

    made: list[str] = []
    inside = threading.Event()
    release = threading.Event()

    def create_router(name: str, external: str) -> Router:
        made.append(name)
        inside.set()
        assert release.wait(5)
        return Router(id="r1", name=name)

    neutron = SimpleNamespace(
        find_network=lambda ref: Network(id="ext"), find_router=lambda name: None,
        create_router=create_router, floating_ips=lambda description, network: [],
        create_floating_ip=lambda network, description: FloatingIP("f1", "198.51.100.9"))
    publisher = FloatingPublisher(neutron, HOST, "public", "kuryr-publish")  # type: ignore[arg-type]
    results: list[tuple[str, str]] = []
    threads = [threading.Thread(target=lambda: results.append(publisher._setup()))
               for _ in range(3)]
    for thread in threads:
        thread.start()
    assert inside.wait(5)
    assert publisher._lock.acquire(timeout=1), "a lock is held across a Neutron request"
    publisher._lock.release()
    release.set()
    for thread in threads:
        thread.join(5)
    assert made == ["kuryr-publish"]
    assert results == [("r1", "f1")] * 3


def test_a_subnet_another_hosts_forwardings_still_use_stays_on_the_shared_router():
    """Network shared by several hosts' dockerds: the router is every host's, and
    Neutron refuses to detach a subnet that floating IPs still reach."""
    from types import SimpleNamespace

    from kuryr.neutron.types import FloatingIP, Network, Router

    removed: list[str] = []

    def remove_router_interface(router: str, subnet: str) -> None:
        removed.append(subnet)
        if subnet == "s-shared":
            raise errors.Conflict("Router interface for subnet s-shared on router r1 "
                                  "cannot be deleted, as it is required by one or more "
                                  "floating IPs.")

    neutron = SimpleNamespace(
        find_network=lambda ref: Network(id="ext"),
        find_router=lambda name: Router(id="r1", name=name),
        floating_ips=lambda description, network: [FloatingIP("f1", "198.51.100.9")],
        remove_router_interface=remove_router_interface)
    publisher = FloatingPublisher(neutron, HOST, "public", "kuryr-publish")  # type: ignore[arg-type]
    publisher.detach_subnets(["s-shared", "s-own"], known_only=False)
    assert removed == ["s-shared", "s-own"]


def test_a_recycled_port_still_naming_its_last_container_is_recorded_again(driver):
    """kill -9 right after a pooled port moved from one container to the next: its
    return to the pool and the next container's record were both still queued, so
    Neutron names the container that is gone; OVS names the one that has it."""
    d = driver()
    net, (pool_id,) = d.create_network(("10.86.0.0/24", ""))
    ip = d.request(pool_id)
    endpoint = d.create_endpoint(net, ip)
    d.settle()
    port_id = d.state.endpoint(endpoint).port.id
    d.neutron.update_port(port_id, device_id="f" * 64)  # the previous container's
    fresh = driver(neutron=d.neutron, binder=d.binder)
    assert fresh.ports.record_lost_endpoints() == 1
    fresh.settle()
    assert d.neutron.get_port(port_id).device_id == endpoint
    assert fresh.ports.record_lost_endpoints() == 0, "nothing left to record"


def test_nested_kuryr_never_asks_for_a_binding(driver):
    """A VM's credentials have no binding rights: in nested mode no request Kuryr
    sends names binding:host_id, through a pool fill, a start with --expose
    (its groups written before Join) and a stop; and the container's address
    is in the VM port's pairs exactly while its port exists."""
    neutron = FakeNeutron()
    vm_net = neutron.add_network("vms")
    neutron.add_subnet(vm_net.id, "10.93.0.0/24", "10.93.0.1")
    vm_port = neutron.add_port(vm_net.id, "10.93.0.5", status="ACTIVE",
                               device_owner="compute:nova", revision_number=1)
    bindings: list[object] = []
    create, update = neutron.create_port, neutron.update_port

    def recording_create(new):
        bindings.append(new.binding_host_id)
        return create(new)

    def recording_update(port_id, **attrs):
        bindings.append(attrs.get("binding_host_id"))
        return update(port_id, **attrs)
    neutron.create_port = recording_create  # type: ignore[method-assign]
    neutron.update_port = recording_update  # type: ignore[method-assign]
    d = driver(pool_size=1, neutron=neutron,
               placement=AddressPairs("vm1", vm_port, neutron))  # type: ignore[arg-type]
    net, (pool_id,) = d.create_network(("10.93.0.0/24", ""),
                                       options={"neutron.net.uuid": vm_net.id})
    endpoint, ip = d.start(net, pool_id, options={
        models.EXPOSED_PORTS_OPTION: [{"Proto": 6, "Port": 9999}]})
    d.settle()
    pairs = {a for a, _ in neutron.get_port(vm_port.id).allowed_address_pairs}
    assert ip in pairs
    assert marks.vm_tag(vm_port.id) in d.port_of(endpoint).tags
    port_id = d.port_of(endpoint).id
    d.stop(net, endpoint)
    d.release(pool_id, ip)
    d.settle()
    assert port_id not in neutron.ports_  # its own groups: deleted, not pooled
    assert ip not in {a for a, _ in neutron.get_port(vm_port.id).allowed_address_pairs}
    assert bindings
    assert set(bindings) == {None}, "a nested request asked for a binding"

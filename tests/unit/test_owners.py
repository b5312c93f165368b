"""Docker's Kuryr and the CNI daemon on one host: each front end's core (pool,
lifecycle, ownership rules) and Docker's garbage collector touch only ports with
their own device owners."""

from __future__ import annotations

import datetime
from collections.abc import Iterator
from types import SimpleNamespace

import pytest

from kuryr import errors
from kuryr.core import ownership
from kuryr.core.background import Background
from kuryr.core.model import NetworkRecord
from kuryr.core.naming import NoNames
from kuryr.core.placement import OnHost
from kuryr.core.pool import PortPool
from kuryr.core.ports import EndpointRecord, PortLifecycle, Settings
from kuryr.core.state import State
from kuryr.libnetwork import gc
from kuryr.neutron import marks
from kuryr.neutron.types import Port

from .fakes import FakeBinder, FakeNeutron

HOST = "host-a"


class Core:
    """One front end's core over shared fakes (one Neutron, one host)."""

    def __init__(self, neutron: FakeNeutron, binder: FakeBinder, owners: marks.Owners,
                 pool_size: int = 2, groups: tuple[str, ...] = ()) -> None:
        self.background = Background()
        self.background.start()
        self.pool = PortPool(neutron, binder, self.background, HOST, pool_size, "br-int",
                             owners=owners, security_group_ids=groups)
        self.pool.start()
        self.ports = PortLifecycle(neutron, binder, self.pool, self.background, State(),
                                   Settings(host=HOST, default_bridge="br-int", owners=owners,
                                            plug_timeout=1, security_group_ids=groups),
                                   NoNames())

    def settle(self) -> None:
        assert self.background.wait_idle(5)
        self.ports._unplugger.submit(lambda: None).result()

    def close(self) -> None:
        self.settle()
        self.pool.stop()
        self.background.stop(5)
        self.ports.stop()


@pytest.fixture
def neutron() -> FakeNeutron:
    return FakeNeutron()


@pytest.fixture
def binder() -> FakeBinder:
    return FakeBinder()


@pytest.fixture
def net(neutron: FakeNeutron) -> NetworkRecord:
    made = neutron.add_network("shared")
    subnet = neutron.add_subnet(made.id, "10.70.0.0/24", "10.70.0.1")
    return NetworkRecord(docker_id=made.id, neutron_id=made.id, mtu=1442, subnets=(subnet,))


@pytest.fixture
def cores(neutron: FakeNeutron, binder: FakeBinder) -> Iterator[tuple[Core, Core]]:
    docker, k8s = (Core(neutron, binder, marks.DOCKER_OWNERS),
                   Core(neutron, binder, marks.K8S_OWNERS))
    yield docker, k8s
    docker.close()
    k8s.close()


def _fill(core: Core, net: NetworkRecord) -> None:
    core.pool._fill(net)


def test_owner_sets_are_disjoint():
    assert not set(marks.DOCKER_OWNERS.all) & set(marks.K8S_OWNERS.all)
    assert marks.DOCKER_OWNERS.all == marks.KURYR_DEVICE_OWNERS


def test_each_pool_makes_ports_with_its_own_owner(cores, net, neutron):
    docker, k8s = cores
    _fill(docker, net)
    _fill(k8s, net)
    owners = sorted(p.device_owner for p in neutron.ports_.values())
    assert owners == sorted([marks.POOL_DEVICE_OWNER] * 2 + [marks.K8S_POOL_DEVICE_OWNER] * 2)


def test_a_restarted_pool_takes_back_only_its_own_front_ends_ports(neutron, binder, net):
    first_docker, first_k8s = (Core(neutron, binder, marks.DOCKER_OWNERS),
                               Core(neutron, binder, marks.K8S_OWNERS))
    _fill(first_docker, net)
    _fill(first_k8s, net)
    first_docker.close()
    first_k8s.close()
    docker, k8s = (Core(neutron, binder, marks.DOCKER_OWNERS),
                   Core(neutron, binder, marks.K8S_OWNERS))
    try:
        assert docker.pool.restore() == 2
        assert k8s.pool.restore() == 2
        held = {neutron.ports_[i].device_owner for i in docker.pool.held()}
        assert held == {marks.POOL_DEVICE_OWNER}
        held = {neutron.ports_[i].device_owner for i in k8s.pool.held()}
        assert held == {marks.K8S_POOL_DEVICE_OWNER}
    finally:
        docker.close()
        k8s.close()


def test_a_pod_never_gets_a_docker_pooled_port_nor_the_reverse(cores, net, neutron):
    docker, k8s = cores
    _fill(docker, net)
    docker_ready = docker.pool.held()
    lease = k8s.ports.attach_ready(net, net.subnets[0], "c" * 64,
                                   EndpointRecord("pod-uid", "kuryr-pod-ns/web"))
    assert lease.port.id not in docker_ready
    assert neutron.ports_[lease.port.id].device_owner in marks.K8S_OWNERS.all
    address = docker.ports.reserve(net, net.subnets[0])
    taken = next(p for p in neutron.ports_.values() if address in p.addresses)
    assert taken.id in docker_ready


@pytest.mark.parametrize(("owners", "theirs"), [
    (marks.DOCKER_OWNERS, marks.K8S_DEVICE_OWNER),
    (marks.DOCKER_OWNERS, marks.K8S_POOL_DEVICE_OWNER),
    (marks.K8S_OWNERS, marks.DEVICE_OWNER),
    (marks.K8S_OWNERS, marks.UNBOUND_DEVICE_OWNER),
])
def test_the_other_front_ends_port_is_never_claimed(owners, theirs):
    port = Port(id="p1", network_id="n", mac_address="m", device_owner=theirs,
                binding_host_id=HOST)
    with pytest.raises(errors.Conflict, match="p1"):
        ownership.claim(port, owners, OnHost(HOST))
    assert not ownership.is_this_hosts(port, owners, HOST)


def test_a_pod_port_is_recorded_for_the_pod_and_returns_to_its_pool(cores, net, neutron,
                                                                    binder):
    _, k8s = cores
    _fill(k8s, net)
    record = EndpointRecord("pod-uid-1", "kuryr-pod-default/web-0",
                            ("kuryr.k8s.pod:default/web-0",))
    lease = k8s.ports.attach_ready(net, net.subnets[0], "c" * 64, record)
    k8s.settle()
    port = neutron.ports_[lease.port.id]
    assert (port.device_owner, port.device_id, port.name, port.tags) == (
        marks.K8S_DEVICE_OWNER, "pod-uid-1", "kuryr-pod-default/web-0",
        ("kuryr.k8s.pod:default/web-0",))
    assert k8s.ports.attach_ready(net, net.subnets[0], "c" * 64, record) is lease
    k8s.ports.detach(net, "c" * 64)
    k8s.settle()
    port = neutron.ports_[lease.port.id]
    assert (port.device_owner, port.device_id, port.tags) == (
        marks.K8S_POOL_DEVICE_OWNER, "", ())
    assert lease.port.id in k8s.pool.held()
    assert binder.endpoint_of(_vif(lease.port)) is None


def _vif(port: Port):
    from kuryr.core.binder import vif_of

    return vif_of(port, None, "br-int")


def test_docker_leaves_a_pods_lost_record_alone(cores, net, neutron, binder):
    docker, k8s = cores
    lease = k8s.ports.attach_ready(net, net.subnets[0], "c" * 64,
                                   EndpointRecord("pod-uid", "kuryr-pod-ns/web"))
    k8s.settle()
    assert docker.ports.record_lost_endpoints() == 0
    docker.settle()
    assert neutron.ports_[lease.port.id].device_id == "pod-uid"


def test_a_pods_record_lost_with_the_process_is_written_again_from_its_interface(
        cores, net, neutron, binder):
    _, k8s = cores
    _fill(k8s, net)
    record = EndpointRecord("pod-uid-2", "kuryr-pod-ns/db-0", ("kuryr.k8s.pod:ns/db-0",))
    lease = k8s.ports.attach_ready(net, net.subnets[0], "d" * 64, record)
    k8s.settle()
    # As if the process died before its background write: the port is still pooled.
    neutron.update_port(lease.port.id, device_id="", device_owner=marks.K8S_POOL_DEVICE_OWNER,
                        name=marks.POOL_PORT_NAME)
    neutron.set_port_tags(lease.port.id, [])
    fresh = Core(neutron, binder, marks.K8S_OWNERS)
    try:
        assert fresh.ports.record_lost_endpoints() == 1
        fresh.settle()
        port = neutron.ports_[lease.port.id]
        assert (port.device_owner, port.device_id, port.name, port.tags) == (
            marks.K8S_DEVICE_OWNER, "pod-uid-2", "kuryr-pod-ns/db-0",
            ("kuryr.k8s.pod:ns/db-0",))
        assert fresh.ports.record_lost_endpoints() == 0, "nothing left to record"
    finally:
        fresh.close()


def test_a_pod_port_back_in_the_pool_loses_the_groups_a_policy_gave_it(neutron, binder, net):
    k8s = Core(neutron, binder, marks.K8S_OWNERS, groups=("sg-default",))
    try:
        _fill(k8s, net)
        lease = k8s.ports.attach_ready(net, net.subnets[0], "e" * 64,
                                       EndpointRecord("pod-uid-3", "kuryr-pod-ns/x"))
        k8s.settle()
        neutron.update_port(lease.port.id, security_group_ids=["sg-policy"])  # the controller
        k8s.ports.detach(net, "e" * 64)
        k8s.settle()
        assert neutron.ports_[lease.port.id].security_group_ids == ("sg-default",)
        # A return that died with the process: a restarted pool does not reuse it.
        neutron.update_port(lease.port.id, security_group_ids=["sg-policy"])
        fresh = Core(neutron, binder, marks.K8S_OWNERS, groups=("sg-default",))
        try:
            fresh.pool.restore()
            fresh.settle()
            assert lease.port.id not in fresh.pool.held()
        finally:
            fresh.close()
    finally:
        k8s.close()


def test_dockers_garbage_collector_never_sees_a_pods_port():
    old = "2020-01-01T00:00:00Z"
    now = datetime.datetime.now(datetime.UTC)
    pods = [SimpleNamespace(id=f"{n}aaaaaaa-1111", device_owner=owner, mac_address="m",
                            tags=[], created_at=old, updated_at=old)
            for n, owner in enumerate(marks.K8S_OWNERS.all)]
    assert gc._ports(pods, links=set(), grace=datetime.timedelta(0), now=now) == []  # type: ignore[arg-type]


def test_two_overlapping_detaches_of_one_pod_return_its_port_once(cores, net, neutron):
    """kubelet's two DELs of a sandbox can overlap: both find the endpoint, but
    only one may return (or delete) its port; the port was once left both
    deleted in Neutron and ready in the pool, then handed to the next pod."""
    import threading

    _, k8s = cores
    _fill(k8s, net)
    lease = k8s.ports.attach_ready(net, net.subnets[0], "f" * 64,
                                   EndpointRecord("pod-uid-4", "kuryr-pod-ns/y"))
    k8s.settle()
    both_looked = threading.Barrier(2, timeout=5)
    look_up = k8s.ports.state.endpoint

    def endpoint_after_both_looked(endpoint_id: str):
        found = look_up(endpoint_id)
        both_looked.wait()  # the two DELs both see the endpoint before either detaches
        return found

    k8s.ports.state.endpoint = endpoint_after_both_looked
    results = []
    threads = [threading.Thread(target=lambda: results.append(k8s.ports.detach(net, "f" * 64)))
               for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(5)
    k8s.ports.state.endpoint = look_up
    k8s.settle()
    assert sorted(r is lease for r in results) == [False, True]
    assert lease.port.id in neutron.ports_  # not deleted
    ready = list(k8s.pool._ready[net.neutron_id])
    assert [p.id for p in ready].count(lease.port.id) == 1


def test_a_large_pool_fills_in_batches_of_short_bulk_requests(neutron, binder, net):
    sizes = []
    create_ports = neutron.create_ports
    neutron.create_ports = lambda ports: sizes.append(len(ports)) or create_ports(ports)
    background = Background()
    pool = PortPool(neutron, binder, background, HOST, 25, "br-int",
                    owners=marks.K8S_OWNERS, batch=10)
    pool.start()
    try:
        pool.refill_soon(net)
        import time
        deadline = time.monotonic() + 5
        while len(pool.held()) < 25 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert len(pool.held()) == 25
        assert sizes == [10, 10, 5]
    finally:
        pool.stop()


def test_a_pool_whose_ports_never_plug_does_not_retry_forever(neutron, binder, net):
    sizes = []
    create_ports = neutron.create_ports
    neutron.create_ports = lambda ports: sizes.append(len(ports)) or create_ports(ports)
    binder.plug = lambda *args, **kwargs: (_ for _ in ()).throw(OSError("no bridge"))
    pool = PortPool(neutron, binder, Background(), HOST, 25, "br-int",
                    owners=marks.K8S_OWNERS, batch=10)
    pool._fill(net)
    assert sizes == [10]
    assert pool._wanted == {}  # no next round queued
    assert not [p for p in neutron.ports_.values() if p.device_owner == marks.K8S_POOL_DEVICE_OWNER]

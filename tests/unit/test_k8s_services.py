"""Services as load balancers: the mapping Service + Endpoints -> load balancer
(pure), and the step-by-step convergence against a backend that, like
Octavia, refuses changes while a load balancer is busy."""

from __future__ import annotations

import itertools

import pytest

from kuryr.k8s.events import NotReady
from kuryr.k8s.services import (
    FINALIZER,
    MemberSubnets,
    ServiceLoadBalancers,
    cluster_ip,
    owner_tag,
    wanted_load_balancer,
)
from kuryr.lbaas.model import (
    Listener,
    LoadBalancer,
    Member,
    Protocol_,
    SeenListener,
    SeenLoadBalancer,
    Status,
)
from kuryr.lbaas.octavia import load_balancer_body, seen_from_status
from kuryr.neutron.types import Subnet

POD_SUBNET = "sub-pods"
SVC_SUBNET = Subnet(id="svc-sub", network_id="svc", cidr="10.96.0.0/15", ip_version=4,
                    project_id="p1")


def _subnet_of(address: str) -> str | None:
    return POD_SUBNET if address.startswith("10.244.") else None


def _service(ports=None, uid="u1", **spec) -> dict:
    return {"metadata": {"namespace": "ns", "name": "web", "uid": uid, "resourceVersion": "3",
                         "finalizers": [FINALIZER]},
            "spec": {"clusterIP": "10.96.0.20", "type": "ClusterIP", "selector": {"app": "w"},
                     "ports": ports or [{"name": "http", "protocol": "TCP", "port": 80,
                                         "targetPort": 8080}], **spec}}


def _endpoints(ready=("10.244.1.5", "10.244.1.6"), not_ready=(), port=8080, name="http",
               protocol="TCP") -> dict:
    return {"metadata": {"namespace": "ns", "name": "web"},
            "subsets": [{"addresses": [{"ip": ip} for ip in ready],
                         "notReadyAddresses": [{"ip": ip} for ip in not_ready],
                         "ports": [{"name": name, "port": port, "protocol": protocol}]}]}


def test_a_service_port_is_a_listener_whose_members_are_the_ready_endpoints():
    lb, unplaced = wanted_load_balancer(_service(), _endpoints(not_ready=("10.244.1.7",)),
                                        "sub-svc", _subnet_of)
    assert lb.vip_address == "10.96.0.20"
    assert lb.vip_subnet_id == "sub-svc"
    assert lb.owner_tag == owner_tag("u1")
    assert lb.name == "kuryr/ns/web"
    assert [lst.name for lst in lb.listeners] == ["TCP:80"]
    assert lb.listeners[0].members == {Member("10.244.1.5", 8080, POD_SUBNET),
                                       Member("10.244.1.6", 8080, POD_SUBNET)}
    assert unplaced == set()


def test_ports_match_endpoints_by_name_and_protocol_and_affinity_picks_source_ip():
    svc = _service(ports=[{"name": "dns", "protocol": "UDP", "port": 53, "targetPort": 5353},
                          {"name": "dns-tcp", "protocol": "TCP", "port": 53,
                           "targetPort": 5353}], sessionAffinity="ClientIP")
    eps = _endpoints(name="dns", protocol="UDP", port=5353)
    lb, _ = wanted_load_balancer(svc, eps, "s", _subnet_of)
    assert lb.algorithm == "SOURCE_IP"
    udp, tcp = lb.listeners
    assert (udp.name, len(udp.members)) == ("UDP:53", 2)
    assert (tcp.name, tcp.members) == ("TCP:53", frozenset())  # no TCP endpoint port


def test_addresses_on_no_pod_subnet_are_reported_not_made_members():
    lb, unplaced = wanted_load_balancer(_service(), _endpoints(ready=("192.0.2.9",)), "s",
                                        _subnet_of)
    assert lb.listeners[0].members == frozenset()
    assert unplaced == {"192.0.2.9"}


@pytest.mark.parametrize("spec", [{"clusterIP": "None"}, {"type": "ExternalName",
                                                          "clusterIP": ""}])
def test_headless_and_external_name_services_get_no_load_balancer(spec):
    assert cluster_ip(_service(**spec)) is None


def test_the_octavia_create_is_one_fully_populated_request():
    lb = LoadBalancer(owner_tag="kuryr.k8s.svc:u1", name="kuryr/ns/web", vip_address="10.96.0.20",
                      vip_subnet_id="s", tags=("kuryr.k8s.lb",), listeners=(
                          Listener(Protocol_.TCP, 80, frozenset({Member("10.244.1.5", 8080,
                                                                        "p")})),))
    body = load_balancer_body(lb, "ovn")
    assert body["provider"] == "ovn"
    assert body["tags"] == ["kuryr.k8s.lb", "kuryr.k8s.svc:u1"]
    (listener,) = body["listeners"]
    assert listener["protocol_port"] == 80
    assert listener["name"] == "TCP:80"
    assert listener["default_pool"]["members"] == [
        {"address": "10.244.1.5", "protocol_port": 8080, "subnet_id": "p"}]


def test_the_status_tree_gives_listeners_pools_and_members():
    tree = {"id": "lb1", "listeners": [
        {"id": "l1", "name": "TCP:80", "pools": [{"id": "p1", "members": [
            {"address": "10.244.1.5", "protocol_port": 8080}]}]},
        {"id": "l2", "name": "UDP:53", "pools": []}]}
    seen = seen_from_status({"id": "lb1", "provisioning_status": "ACTIVE",
                             "vip_address": "10.96.0.20", "vip_port_id": "vp"}, tree)
    assert seen.status is Status.ACTIVE
    assert seen.vip_port_id == "vp"
    assert seen.listener("TCP:80") == SeenListener("l1", "TCP:80", "p1",
                                                   frozenset({("10.244.1.5", 8080)}))
    assert seen.listener("UDP:53").pool_id is None


def test_member_subnets_list_again_on_a_miss_but_not_more_often_than_asked():
    listings = itertools.count()
    subnets = [Subnet(id="a", network_id="n", cidr="10.244.0.0/16", gateway_ip=None, ip_version=4)]

    def listed():
        next(listings)
        return list(subnets)

    resolver = MemberSubnets(listed, refresh=3600)
    assert resolver.subnet_of("10.244.3.4") == "a"
    subnets.append(Subnet(id="b", network_id="n", cidr="10.245.0.0/24", ip_version=4))
    assert resolver.subnet_of("10.245.0.9") is None  # listed too recently to list again
    assert next(listings) == 1


class FakeOctavia:
    """Octavia's rules that matter here: one load balancer per create, and no
    change accepted while it is pending (409 in Octavia: an error here)."""

    def __init__(self) -> None:
        self.lb: SeenLoadBalancer | None = None
        self.writes: list[str] = []

    def finish(self) -> None:  # Octavia carried the last write out
        if self.lb is not None:
            self.lb = SeenLoadBalancer(self.lb.id, Status.ACTIVE, self.lb.vip_address, "vp",
                                       self.lb.listeners)

    def find(self, owner_tag):
        return self.lb

    def _busy(self, listeners) -> None:
        assert self.lb is not None
        assert not self.lb.status.pending, "Octavia answers 409"
        self.lb = SeenLoadBalancer(self.lb.id, Status.PENDING_UPDATE, self.lb.vip_address,
                                   "vp", tuple(listeners))

    def create(self, lb):
        self.writes.append("create")
        self.lb = SeenLoadBalancer("lb1", Status.PENDING_CREATE, lb.vip_address, "vp", tuple(
            SeenListener(f"l-{lst.name}", lst.name, f"p-{lst.name}",
                         frozenset((m.address, m.port) for m in lst.members))
            for lst in lb.listeners))

    def create_listener(self, lb_id, lb, listener):
        self.writes.append(f"listener {listener.name}")
        self._busy([*self.lb.listeners, SeenListener(f"l-{listener.name}", listener.name,
                                                     None)])

    def create_pool(self, lb, listener_id, listener):
        self.writes.append(f"pool {listener.name}")
        self._busy([SeenListener(s.id, s.name, f"p-{s.name}", frozenset(
            (m.address, m.port) for m in listener.members)) if s.id == listener_id else s
            for s in self.lb.listeners])

    def delete_listener(self, listener):
        self.writes.append(f"delete {listener.name}")
        self._busy([s for s in self.lb.listeners if s.id != listener.id])

    def replace_members(self, pool_id, members):
        self.writes.append(f"members {pool_id} {len(members)}")
        self._busy([SeenListener(s.id, s.name, s.pool_id, frozenset(
            (m.address, m.port) for m in members)) if s.pool_id == pool_id else s
            for s in self.lb.listeners])

    def delete(self, lb_id):
        self.writes.append("delete")
        self.lb = None


class Kube:
    def __init__(self) -> None:
        self.finalizers: list[list[str]] = []

    def patch_metadata(self, kind, obj, *, annotations=None, finalizers=None):
        self.finalizers.append(list(finalizers or ()))
        return {**obj, "metadata": {**obj["metadata"], "finalizers": list(finalizers or ())}}


def _converge(services, octavia, svc, eps, passes=10) -> int:
    """Passes until one raises nothing; Octavia finishes each write between passes."""
    for count in range(1, passes + 1):
        try:
            services.apply(svc, eps)
            return count
        except NotReady:
            octavia.finish()
    raise AssertionError("did not converge")


def _services(octavia):
    pods = Subnet(id=POD_SUBNET, network_id="n", cidr="10.244.0.0/16", ip_version=4)
    return ServiceLoadBalancers(octavia, Kube(), MemberSubnets(lambda: [pods]), SVC_SUBNET)


def test_a_new_service_is_one_create_and_waits_without_writing_again():
    octavia = FakeOctavia()
    services = _services(octavia)
    with pytest.raises(NotReady):
        services.apply(_service(), _endpoints())
    with pytest.raises(NotReady):  # still PENDING_CREATE: no second create, no write
        services.apply(_service(), _endpoints())
    assert octavia.writes == ["create"]
    octavia.finish()
    services.apply(_service(), _endpoints())  # in sync: nothing to do
    assert octavia.writes == ["create"]


def test_scale_new_port_and_removed_port_converge_one_write_at_a_time():
    octavia = FakeOctavia()
    services = _services(octavia)
    _converge(services, octavia, _service(), _endpoints())
    _converge(services, octavia, _service(), _endpoints(ready=("10.244.1.5",)))
    assert octavia.writes[-1] == "members p-TCP:80 1"
    two_ports = _service(ports=[{"name": "http", "protocol": "TCP", "port": 80},
                                {"name": "dns", "protocol": "UDP", "port": 53}])
    _converge(services, octavia, two_ports, _endpoints())
    assert octavia.writes[-2:] == ["listener UDP:53", "pool UDP:53"]
    _converge(services, octavia, _service(ports=[{"name": "dns", "protocol": "UDP",
                                                  "port": 53}]), _endpoints())
    assert "delete TCP:80" in octavia.writes
    assert [lst.name for lst in octavia.lb.listeners] == ["UDP:53"]


def test_a_service_deleted_while_its_load_balancer_is_pending_waits_then_deletes_it():
    octavia = FakeOctavia()
    services = _services(octavia)
    with pytest.raises(NotReady):
        services.apply(_service(), _endpoints())
    deleting = _service()
    deleting["metadata"]["deletionTimestamp"] = "2026-12-01T06:00:00Z"
    with pytest.raises(NotReady):  # pending: Octavia would refuse the delete
        services.apply(deleting, _endpoints())
    assert octavia.writes == ["create"]
    octavia.finish()
    with pytest.raises(NotReady):
        services.apply(deleting, _endpoints())
    assert octavia.writes[-1] == "delete"
    services.apply(deleting, _endpoints())  # gone: the finalizer is released
    assert services._kube.finalizers[-1] == []


def test_a_service_gets_the_finalizer_before_its_load_balancer_is_made():
    octavia = FakeOctavia()
    kube = Kube()
    services = ServiceLoadBalancers(octavia, kube, MemberSubnets(list), SVC_SUBNET)
    fresh = _service()
    fresh["metadata"]["finalizers"] = []
    with pytest.raises(NotReady):
        services.apply(fresh, _endpoints())
    assert kube.finalizers == [[FINALIZER]]


def test_a_selector_service_waits_for_its_endpoints_object():
    octavia = FakeOctavia()
    _services(octavia).apply(_service(), None)
    assert octavia.writes == []


def test_a_load_balancer_is_pending_while_any_part_is():
    """OVN's provider reports the load balancer ACTIVE before a pool's members
    are done; Octavia refuses a change to that pool meanwhile (409)."""
    tree = {"listeners": [{"id": "l1", "name": "TCP:80", "provisioning_status": "ACTIVE",
                           "pools": [{"id": "p1", "provisioning_status": "PENDING_UPDATE",
                                      "members": []}]}]}
    seen = seen_from_status({"id": "lb1", "provisioning_status": "ACTIVE"}, tree)
    assert seen.status is Status.PENDING_UPDATE


def test_octavia_refusing_a_change_is_a_retry_not_a_failure():
    from kuryr.lbaas.model import Busy

    class Refusing(FakeOctavia):
        def replace_members(self, pool_id, members):
            raise Busy("Pool p is immutable and cannot be updated")

    octavia = Refusing()
    services = _services(octavia)
    _converge(services, octavia, _service(), _endpoints())
    with pytest.raises(NotReady):
        services.apply(_service(), _endpoints(ready=("10.244.1.5",)))


def test_a_deleted_services_last_state_still_names_the_finalizer_and_that_is_fine():
    """The API server's DELETED event carries the Service as it was before the
    patch that released the finalizer (seen on 1.20): nothing is left to patch."""
    from kuryr.k8s.api import ObjectGone

    class GoneKube(Kube):
        def patch_metadata(self, kind, obj, *, annotations=None, finalizers=None):
            raise ObjectGone("Service web is gone")

    services = ServiceLoadBalancers(FakeOctavia(), GoneKube(), MemberSubnets(list), SVC_SUBNET)
    services._remove(_service())  # a pass racing the deletion: no load balancer, no error


def test_a_deleted_service_is_not_patched_and_its_leftover_load_balancer_goes():
    octavia = FakeOctavia()
    kube = Kube()
    services = ServiceLoadBalancers(octavia, kube, MemberSubnets(list), SVC_SUBNET)
    _converge(services, octavia, _service(), _endpoints())
    patches = len(kube.finalizers)
    with pytest.raises(NotReady):  # its finalizer was removed by hand: collected anyway
        services.remove_deleted(_service())
    services.remove_deleted(_service())
    assert octavia.writes[-1] == "delete"
    assert len(kube.finalizers) == patches


def test_a_headless_service_costs_no_request():
    class Untouchable(FakeOctavia):
        def find(self, owner_tag):
            raise AssertionError("no request for a Service Kuryr never handled")

    headless = _service(clusterIP="None")
    headless["metadata"]["finalizers"] = []
    ServiceLoadBalancers(Untouchable(), Kube(), MemberSubnets(list), SVC_SUBNET).apply(
        headless, _endpoints())


class Floating:
    def __init__(self) -> None:
        self.held: dict[str, str] = {}

    def ensure(self, tag, vip_port_id):
        return self.held.setdefault(tag, "198.51.100.7")

    def release(self, tag):
        self.held.pop(tag, None)


class StatusKube(Kube):
    def __init__(self) -> None:
        super().__init__()
        self.statuses: list[dict] = []

    def patch_service_status(self, service, status):
        self.statuses.append(status)


def test_type_load_balancer_shows_its_floating_ip_and_loses_it_when_the_type_changes():
    octavia, kube, floating = FakeOctavia(), StatusKube(), Floating()
    services = ServiceLoadBalancers(octavia, kube, MemberSubnets(list), SVC_SUBNET, floating)
    public = _service(type="LoadBalancer")
    _converge(services, octavia, public, _endpoints())
    assert kube.statuses == [{"loadBalancer": {"ingress": [{"ip": "198.51.100.7"}]}}]
    public["status"] = {"loadBalancer": {"ingress": [{"ip": "198.51.100.7"}]}}
    services.apply(public, _endpoints())  # shown already: no second patch
    assert len(kube.statuses) == 1
    private = {**public, "spec": {**public["spec"], "type": "ClusterIP"}}
    services.apply(private, _endpoints())
    assert floating.held == {}
    # A JSON merge patch removes a key only when it names it with null.
    assert kube.statuses[-1] == {"loadBalancer": {"ingress": None}}


class Response:
    def __init__(self, status: int, body: dict | None = None) -> None:
        import json as _json
        self.status_code = status
        self.content = _json.dumps(body).encode() if body is not None else b""
        self.text = self.content.decode()
        self.headers = {"content-type": "application/json"}
        self._body = body

    def json(self):
        return self._body


class Adapter:
    """openstacksdk's adapter as Octavia answers: canned responses by (method, path)."""

    def __init__(self, answers: dict) -> None:
        self.answers = answers
        self.sent: list[tuple[str, str, dict | None]] = []

    def request(self, path, method, json=None):
        self.sent.append((method, path, json))
        return self.answers[(method, path.split("?")[0])]


def test_octavia_finds_by_tag_reads_the_status_tree_and_maps_409_to_busy():
    from kuryr.lbaas.model import Busy
    from kuryr.lbaas.octavia import Octavia

    lb = {"id": "lb1", "provisioning_status": "ACTIVE", "vip_address": "10.96.0.20",
          "vip_port_id": "vp"}
    adapter = Adapter({
        ("GET", "/lbaas/loadbalancers"): Response(200, {"loadbalancers": [lb]}),
        ("GET", "/lbaas/loadbalancers/lb1/status"): Response(200, {"statuses": {
            "loadbalancer": {"listeners": []}}}),
        ("PUT", "/lbaas/pools/p1/members"): Response(409, {"faultstring": "immutable"}),
        ("DELETE", "/lbaas/loadbalancers/lb1"): Response(404),
    })
    octavia = Octavia(adapter, "ovn")
    seen = octavia.find("kuryr.k8s.svc:u1")
    assert seen is not None
    assert seen.vip_port_id == "vp"
    assert adapter.sent[0][1] == "/lbaas/loadbalancers?tags=kuryr.k8s.svc:u1"
    with pytest.raises(Busy):
        octavia.replace_members("p1", [Member("10.244.1.5", 8080, "p")])
    assert adapter.sent[-1][2] == {"members": [
        {"address": "10.244.1.5", "protocol_port": 8080, "subnet_id": "p"}]}
    octavia.delete("lb1")  # gone already: fine
    assert adapter.sent[-1][1] == "/lbaas/loadbalancers/lb1?cascade=true"

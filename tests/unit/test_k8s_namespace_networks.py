"""The namespace pod network driver of the CNI daemon: the annotation, the watch
cache and its bounded wait, the network records kept by network id."""

from __future__ import annotations

import json
import threading
import time

import pytest

from kuryr import errors
from kuryr.cni.protocol import Code
from kuryr.k8s.app import code_of
from kuryr.k8s.events import Event, EventType
from kuryr.k8s.namespace_cache import (
    AnnotatedNetwork,
    BadAnnotation,
    NamespaceNetworkCache,
    NetworkNotAnnounced,
    parse_network_annotation,
)
from kuryr.k8s.namespaces import network_annotation
from kuryr.k8s.networks import NamespaceNetworks
from kuryr.neutron import marks

from .fakes import FakeNeutron


def namespace(name: str, annotation: str | None = None) -> dict:
    meta: dict = {"name": name, "uid": f"uid-{name}", "resourceVersion": "1"}
    if annotation is not None:
        meta["annotations"] = {marks.K8S_NETWORK_ANNOTATION: annotation}
    return {"metadata": meta}


def seen(cache: NamespaceNetworkCache, obj: dict, kind: EventType = EventType.ADDED) -> None:
    cache.observe(Event(kind, "Namespace", obj))


GOOD = json.dumps({"network_id": "n1", "subnet_id": "s1", "cidr": "10.1.0.0/24"})


# -- the annotation ----------------------------------------------------------------------
def test_the_controllers_annotation_parses():
    neutron = FakeNeutron()
    net = neutron.add_network()
    subnet = neutron.add_subnet(net.id, "10.1.2.0/24", "10.1.2.1")
    assert parse_network_annotation("a", network_annotation(subnet)) == AnnotatedNetwork(
        network_id=net.id, subnet_id=subnet.id, cidr="10.1.2.0/24")


@pytest.mark.parametrize(("raw", "says"), [
    ("{not json", "is not JSON"),
    ("[1, 2]", "is not a JSON object"),
    (json.dumps({"network_id": "n1", "cidr": "10.0.0.0/24"}), "lacks subnet_id"),
    (json.dumps({"network_id": "", "subnet_id": "s", "cidr": "10.0.0.0/24"}),
     "lacks network_id"),
    (json.dumps({"network_id": "n", "subnet_id": "s", "cidr": "10.0.0.300/24"}),
     "is not a network"),
])
def test_a_bad_annotation_is_a_clear_error_naming_the_namespace(raw, says):
    with pytest.raises(BadAnnotation) as caught:
        parse_network_annotation("team-a", raw)
    assert says in str(caught.value)
    assert "namespace team-a" in str(caught.value)
    assert marks.K8S_NETWORK_ANNOTATION in str(caught.value)
    assert code_of(caught.value) is Code.INVALID_CONFIG  # 7: retrying does not help


# -- the cache ---------------------------------------------------------------------------
def test_a_known_namespace_answers_at_once():
    cache = NamespaceNetworkCache(wait=5)
    seen(cache, namespace("a", GOOD))
    started = time.monotonic()
    assert cache.network_of("a").network_id == "n1"
    assert time.monotonic() - started < 0.5


def test_a_namespace_without_annotation_is_try_again_after_the_bounded_wait():
    cache = NamespaceNetworkCache(wait=0.3)
    seen(cache, namespace("a"))
    started = time.monotonic()
    with pytest.raises(NetworkNotAnnounced) as caught:
        cache.network_of("a")
    assert 0.25 <= time.monotonic() - started < 2
    assert "namespace a has no" in str(caught.value)
    assert code_of(caught.value) is Code.TRY_AGAIN_LATER


def test_a_waiting_add_is_woken_by_the_watch_not_by_polling():
    cache = NamespaceNetworkCache(wait=10)
    got: list[AnnotatedNetwork] = []
    waiter = threading.Thread(target=lambda: got.append(cache.network_of("late")))
    started = time.monotonic()
    waiter.start()
    time.sleep(0.1)
    seen(cache, namespace("other", GOOD))  # another namespace: keeps waiting
    time.sleep(0.1)
    assert not got
    seen(cache, namespace("late", GOOD), EventType.MODIFIED)
    waiter.join(5)
    assert got
    assert got[0].subnet_id == "s1"
    assert time.monotonic() - started < 2


def test_a_bad_annotation_in_the_cache_fails_at_once():
    cache = NamespaceNetworkCache(wait=10)
    seen(cache, namespace("a", "{oops"))
    started = time.monotonic()
    with pytest.raises(BadAnnotation, match=r"namespace a: .* is not JSON"):
        cache.network_of("a")
    assert time.monotonic() - started < 1


def test_deleted_or_unannotated_namespaces_are_forgotten():
    cache = NamespaceNetworkCache(wait=0)
    seen(cache, namespace("a", GOOD))
    seen(cache, namespace("a", GOOD), EventType.DELETED)
    with pytest.raises(NetworkNotAnnounced):
        cache.network_of("a")
    seen(cache, namespace("b", GOOD))
    seen(cache, namespace("b"), EventType.MODIFIED)  # annotation removed
    with pytest.raises(NetworkNotAnnounced):
        cache.network_of("b")


# -- the driver --------------------------------------------------------------------------
def driver_with(neutron: FakeNeutron, *names: str) -> tuple[NamespaceNetworks, dict]:
    cache = NamespaceNetworkCache(wait=0)
    subnets = {}
    for i, name in enumerate(names):
        net = neutron.add_network(f"kuryr-ns-{name}")
        subnets[name] = neutron.add_subnet(net.id, f"10.9.{i}.0/24", f"10.9.{i}.1")
        seen(cache, namespace(name, network_annotation(subnets[name])))
    return NamespaceNetworks(neutron, cache), subnets


def test_each_namespace_gets_its_own_network_looked_up_once():
    neutron = FakeNeutron()
    networks, subnets = driver_with(neutron, "a", "b")
    a = networks.network_for("a")
    b = networks.network_for("b")
    assert (a.neutron_id, a.subnets) == (subnets["a"].network_id, (subnets["a"],))
    assert (b.neutron_id, b.subnets) == (subnets["b"].network_id, (subnets["b"],))
    assert a.mtu == 1442
    assert networks.subnet_of(a) == subnets["a"]
    asked = neutron.calls["subnets"]
    for _ in range(5):  # no Neutron request once known
        assert networks.network_for("a") is a
        assert networks.network_by_id(a.neutron_id) is a
    assert neutron.calls["subnets"] == asked == 2


def test_two_namespaces_on_one_network_share_its_record():
    """Kept by network id, never by CIDR: the same CIDR in two networks is fine."""
    neutron = FakeNeutron()
    cache = NamespaceNetworkCache(wait=0)
    one, two = neutron.add_network(), neutron.add_network()
    s1 = neutron.add_subnet(one.id, "10.5.0.0/24", "10.5.0.1")
    s2 = neutron.add_subnet(two.id, "10.5.0.0/24", "10.5.0.1")  # same CIDR, other network
    seen(cache, namespace("a", network_annotation(s1)))
    seen(cache, namespace("b", network_annotation(s1)))
    seen(cache, namespace("c", network_annotation(s2)))
    networks = NamespaceNetworks(neutron, cache)
    assert networks.network_for("a") is networks.network_for("b")
    assert networks.network_for("c").neutron_id == two.id
    assert neutron.calls["subnets"] == 2


def test_an_annotation_naming_a_missing_network_or_foreign_subnet_is_refused():
    neutron = FakeNeutron()
    cache = NamespaceNetworkCache(wait=0)
    seen(cache, namespace("gone", json.dumps(
        {"network_id": "nope", "subnet_id": "s", "cidr": "10.0.0.0/24"})))
    net = neutron.add_network()
    neutron.add_subnet(net.id, "10.6.0.0/24", "10.6.0.1")
    seen(cache, namespace("odd", json.dumps(
        {"network_id": net.id, "subnet_id": "another", "cidr": "10.6.0.0/24"})))
    networks = NamespaceNetworks(neutron, cache)
    with pytest.raises(BadAnnotation, match="namespace gone: its network nope is not in"):
        networks.network_for("gone")
    with pytest.raises(BadAnnotation, match="namespace odd: subnet another is not"):
        networks.network_for("odd")


def test_no_namespace_in_cni_args_is_invalid_config():
    networks, _ = driver_with(FakeNeutron())
    with pytest.raises(errors.InvalidInput, match="K8S_POD_NAMESPACE"):
        networks.network_for("")


def test_an_attachments_network_comes_from_its_port_not_its_namespace():
    neutron = FakeNeutron()
    networks, subnets = driver_with(neutron, "a")
    port = neutron.add_port(subnets["a"].network_id, "10.9.0.7")
    assert networks.network_of_port(port.id).neutron_id == subnets["a"].network_id
    with pytest.raises(errors.NotFound):
        networks.network_of_port("no-such-port")

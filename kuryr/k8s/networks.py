"""Pod network drivers ([kubernetes] pod_network_driver): which Neutron network a
pod's port is made on.  ``shared``: one network, looked up at start-up;
``namespace``: each namespace's, named by its annotation."""

from __future__ import annotations

import threading
from typing import Protocol

from kuryr import errors
from kuryr.core.model import NetworkRecord
from kuryr.k8s.namespace_cache import BadAnnotation, NamespaceNetworkCache
from kuryr.neutron.client import Neutron
from kuryr.neutron.types import IPV4, Subnet


class PodNetworks(Protocol):
    def network_for(self, namespace: str) -> NetworkRecord:
        """The Neutron network of the pods of ``namespace`` (no Neutron request
        on a pod's path: looked up ahead)."""

    def subnet_of(self, net: NetworkRecord) -> Subnet:
        """The IPv4 subnet pods' addresses come from."""

    def network_by_id(self, network_id: str) -> NetworkRecord:
        """The record of a network an attachment is on (DEL, CHECK and GC find a
        pod's network from its port, not its namespace: a namespace being deleted
        or a GC naming no pod still works).  NotFound when not a pod network."""

    def network_of_port(self, port_id: str) -> NetworkRecord:
        """The network of a port found on an OVS interface after a restart."""


class SharedNetwork:
    """Every pod on one Neutron network ([kubernetes] pod_network), looked up once."""

    def __init__(self, net: NetworkRecord) -> None:
        self._net = net

    @classmethod
    def look_up(cls, neutron: Neutron, name_or_id: str) -> SharedNetwork:
        return cls(look_up_network(neutron, name_or_id, "pod_network", "of every pod"))

    def network_for(self, namespace: str) -> NetworkRecord:
        return self._net

    def subnet_of(self, net: NetworkRecord) -> Subnet:
        return net.subnets[0]

    def network_by_id(self, network_id: str) -> NetworkRecord:
        if network_id != self._net.neutron_id:
            raise errors.NotFound(f"network {network_id} is not the pod network")
        return self._net

    def network_of_port(self, port_id: str) -> NetworkRecord:
        return self._net  # no request: every pod's port is on it


def look_up_network(neutron: Neutron, name_or_id: str, option: str, role: str) \
        -> NetworkRecord:
    """The network ``[kubernetes] <option>`` names, with its one IPv4 subnet, at
    start-up; SystemExit (the daemon does not start) when it cannot be used."""
    where = f"kuryr cni-daemon: [kubernetes] {option}"
    if not name_or_id:
        raise SystemExit(f"{where} is empty: name the Neutron network (name or UUID) "
                         f"{role}")
    try:
        found = neutron.find_network(name_or_id)
    except errors.NotFound:
        raise SystemExit(f"{where} {name_or_id!r}: no such Neutron network") from None
    except errors.KuryrError as exc:  # ambiguous name, Neutron unreachable
        raise SystemExit(f"{where} {name_or_id!r}: {exc}") from None
    subnets = tuple(s for s in neutron.subnets(network_id=found.id) if s.ip_version == IPV4)
    if len(subnets) != 1:
        raise SystemExit(f"{where} {name_or_id!r} ({found.id}) has {len(subnets)} IPv4 "
                         "subnets; it needs one")
    # Its tags, so an operator's kuryr.pool.size:N on it sizes the node pools.
    return NetworkRecord(docker_id=found.id, neutron_id=found.id, mtu=found.mtu,
                         subnets=subnets, adopted=True, tags=found.tags)


class NamespaceNetworks:
    """A Neutron network per Kubernetes namespace, made by the controller and named
    by the Namespace's annotation (marks.K8S_NETWORK_ANNOTATION), which a watch
    keeps in ``cache``.  Each network's record (MTU, subnet) is looked up once,
    on its first pod (2 GETs: the network, its IPv4 subnets), and kept by
    Neutron network id: an ADD of a known namespace makes no request."""

    def __init__(self, neutron: Neutron, cache: NamespaceNetworkCache) -> None:
        self._neutron = neutron
        self._cache = cache
        self._lock = threading.Lock()  # never held across a Neutron request
        self._records: dict[str, NetworkRecord] = {}  # Neutron network id ->

    def network_for(self, namespace: str) -> NetworkRecord:
        if not namespace:
            raise errors.InvalidInput("pod_network_driver = namespace needs the pod's "
                                      "namespace (K8S_POD_NAMESPACE in CNI_ARGS)")
        annotated = self._cache.network_of(namespace)
        try:
            net = self.network_by_id(annotated.network_id)
        except errors.NotFound:
            raise BadAnnotation(f"namespace {namespace}: its network "
                                f"{annotated.network_id} is not in Neutron") from None
        if net.subnets[0].id != annotated.subnet_id:
            raise BadAnnotation(f"namespace {namespace}: subnet {annotated.subnet_id} "
                                f"is not network {net.neutron_id}'s IPv4 subnet "
                                f"({net.subnets[0].id})")
        return net

    def subnet_of(self, net: NetworkRecord) -> Subnet:
        return net.subnets[0]

    def network_by_id(self, network_id: str) -> NetworkRecord:
        with self._lock:
            known = self._records.get(network_id)
        if known is not None:
            return known
        # Two first pods at once may both look it up: the same facts, kept once.
        found = _network_record(self._neutron, network_id)
        with self._lock:
            return self._records.setdefault(network_id, found)

    def network_of_port(self, port_id: str) -> NetworkRecord:
        return self.network_by_id(self._neutron.get_port(port_id).network_id)


def _network_record(neutron: Neutron, network_id: str) -> NetworkRecord:
    """A namespace's network as the core needs it (2 GETs).  The controller makes
    one IPv4 subnet per namespace network; anything else is refused."""
    network = neutron.get_network(network_id)
    subnets = tuple(s for s in neutron.subnets(network_id=network_id) if s.ip_version == IPV4)
    if len(subnets) != 1:
        raise errors.InvalidInput(f"network {network_id} has {len(subnets)} IPv4 subnets; "
                                  "a namespace's network needs one")
    return NetworkRecord(docker_id=network_id, neutron_id=network_id, mtu=network.mtu,
                         subnets=subnets, adopted=True, tags=network.tags)

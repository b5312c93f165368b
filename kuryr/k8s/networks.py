"""Pod network drivers ([kubernetes] pod_network_driver): which Neutron network a
pod's port is made on, decided once at start-up from config."""

from __future__ import annotations

from typing import Protocol

from oslo_config import cfg

from kuryr import errors
from kuryr.core.model import NetworkRecord
from kuryr.neutron import marks
from kuryr.neutron.client import Neutron
from kuryr.neutron.types import IPV4, Subnet


class PodNetworks(Protocol):
    def network_for(self, namespace: str) -> NetworkRecord:
        """The Neutron network of the pods of ``namespace`` (no Neutron request
        on a pod's path: looked up ahead)."""

    def subnet_of(self, net: NetworkRecord) -> Subnet:
        """The IPv4 subnet pods' addresses come from."""


class SharedNetwork:
    """Every pod on one Neutron network ([kubernetes] pod_network), looked up once."""

    def __init__(self, net: NetworkRecord) -> None:
        self._net = net

    @classmethod
    def look_up(cls, neutron: Neutron, name_or_id: str) -> SharedNetwork:
        if not name_or_id:
            raise SystemExit("kuryr cni-daemon: [kubernetes] pod_network is empty: name the "
                             "Neutron network (name or UUID) of every pod")
        try:
            found = neutron.find_network(name_or_id)
        except errors.NotFound:
            raise SystemExit(f"kuryr cni-daemon: [kubernetes] pod_network {name_or_id!r}: "
                             "no such Neutron network") from None
        except errors.KuryrError as exc:  # ambiguous name, Neutron unreachable
            raise SystemExit(f"kuryr cni-daemon: [kubernetes] pod_network {name_or_id!r}: "
                             f"{exc}") from None
        subnets = tuple(s for s in neutron.subnets(network_id=found.id)
                        if s.ip_version == IPV4)
        if len(subnets) != 1:
            raise SystemExit(f"kuryr cni-daemon: [kubernetes] pod_network {name_or_id!r} "
                             f"({found.id}) has {len(subnets)} IPv4 subnets; it needs one")
        return cls(NetworkRecord(docker_id=found.id, neutron_id=found.id, mtu=found.mtu,
                                 subnets=subnets, adopted=True))

    def network_for(self, namespace: str) -> NetworkRecord:
        return self._net

    def subnet_of(self, net: NetworkRecord) -> Subnet:
        return net.subnets[0]


class NamespaceNetworks:
    """A Neutron network per Kubernetes namespace, made by the controller and named
    by the Namespace's annotation (marks.K8S_NETWORK_ANNOTATION).  Not yet: the
    controller and the daemon's watch of Namespaces come next."""

    def network_for(self, namespace: str) -> NetworkRecord:
        raise errors.InvalidInput(
            "[kubernetes] pod_network_driver = namespace is not implemented yet (the "
            f"namespace's network will be named by its {marks.K8S_NETWORK_ANNOTATION} "
            "annotation); use pod_network_driver = shared")

    def subnet_of(self, net: NetworkRecord) -> Subnet:
        raise errors.InvalidInput("[kubernetes] pod_network_driver = namespace is not "
                                  "implemented yet")


def build_pod_networks(conf: cfg.ConfigOpts, neutron: Neutron) -> PodNetworks:
    """The driver [kubernetes] pod_network_driver names; SystemExit when its
    network cannot be used (the daemon does not start)."""
    if conf.kubernetes.pod_network_driver == "shared":
        return SharedNetwork.look_up(neutron, conf.kubernetes.pod_network)
    return NamespaceNetworks()

"""The namespace pod network driver: a Neutron network and subnet per Namespace.

For a new Namespace: a finalizer first (so its deletion waits for ours), then
a network tagged with the namespace's uid, a subnet from ``pod_subnetpool``
attached to ``pod_router``, and the annotation the CNI daemon reads
(marks.K8S_NETWORK_ANNOTATION: JSON with network_id, subnet_id, cidr).  Every
step finds what an earlier, interrupted run made (by the tag, the network's
subnets, the router's ports) before making anything.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass

from kuryr import errors
from kuryr.k8s.api import KubeApi
from kuryr.k8s.events import NotReady, Obj, metadata
from kuryr.neutron import marks
from kuryr.neutron.client import Neutron
from kuryr.neutron.types import Network, Subnet

LOG = logging.getLogger(__name__)

FINALIZER = "openstack.org/kuryr-network"
NAMESPACE_TAG = "kuryr.k8s.ns:"  # + the namespace's uid (Neutron tags: <= 60 characters)
ROUTER_INTERFACE_OWNERS = ("network:router_interface", "network:router_interface_distributed")


def namespace_tag(uid: str) -> str:
    return NAMESPACE_TAG + uid


def network_annotation(subnet: Subnet) -> str:
    return json.dumps({"network_id": subnet.network_id, "subnet_id": subnet.id,
                       "cidr": subnet.cidr}, sort_keys=True)


@dataclass(frozen=True)
class PodNetworkPlan:
    """Where namespaces' subnets come from (resolved once at start-up)."""

    subnetpool_id: str
    prefixlen: int
    router_id: str


class NamespaceNetworks:
    def __init__(self, neutron: Neutron, kube: KubeApi, plan: PodNetworkPlan) -> None:
        self._neutron = neutron
        self._kube = kube
        self._plan = plan

    def apply_namespace(self, namespace: Obj) -> None:
        if metadata(namespace).get("deletionTimestamp"):
            self.delete_namespace_network(namespace)
            return
        if (metadata(namespace).get("annotations") or {}).get(marks.K8S_NETWORK_ANNOTATION):
            return  # made already (re-listed or relabelled namespace)
        namespace = self._with_finalizer(namespace)
        meta = metadata(namespace)
        network = self._ensure_network(str(meta["name"]), str(meta["uid"]))
        subnet = self._ensure_subnet(network, str(meta["name"]))
        self._ensure_router_interface(subnet)
        self._kube.patch_metadata("Namespace", namespace, annotations={
            marks.K8S_NETWORK_ANNOTATION: network_annotation(subnet)})
        LOG.info("namespace %s: network %s, subnet %s (%s)", meta["name"], network.id,
                 subnet.id, subnet.cidr)

    def delete_namespace_network(self, namespace: Obj) -> None:
        """Once the namespace's pods' ports are gone: the router interface, the
        subnet, the network; then the finalizer."""
        meta = metadata(namespace)
        for network in self._neutron.networks_tagged([namespace_tag(str(meta["uid"]))]):
            pods_ports = self._neutron.ports(network_id=network.id,
                                             device_owner=marks.K8S_DEVICE_OWNER)
            if pods_ports:
                raise NotReady(f"namespace {meta['name']}: {len(pods_ports)} pod ports remain")
            for subnet in self._neutron.subnets(network_id=network.id):
                self._neutron.remove_router_interface(self._plan.router_id, subnet.id)
                self._neutron.delete_subnet(subnet.id)
            try:
                self._neutron.delete_network(network.id)
            except errors.Conflict as exc:  # ports of others (a pool's) still on it
                raise NotReady(f"namespace {meta['name']}: {exc}") from exc
        finalizers = list(meta.get("finalizers") or ())
        if FINALIZER in finalizers:
            self._kube.patch_metadata("Namespace", namespace,
                                      finalizers=[f for f in finalizers if f != FINALIZER])

    def _with_finalizer(self, namespace: Obj) -> Obj:
        finalizers = list(metadata(namespace).get("finalizers") or ())
        if FINALIZER in finalizers:
            return namespace
        return self._kube.patch_metadata("Namespace", namespace,
                                         finalizers=[*finalizers, FINALIZER])

    def _ensure_network(self, name: str, uid: str) -> Network:
        tag = namespace_tag(uid)
        found = self._neutron.networks_tagged([tag])
        if found:
            return found[0]
        network = self._neutron.create_network(f"kuryr-ns-{name}"[:255])
        self._neutron.set_network_tags(network.id, [tag])
        return network

    def _ensure_subnet(self, network: Network, name: str) -> Subnet:
        found = self._neutron.subnets(network_id=network.id)
        if found:
            return found[0]
        return self._neutron.create_subnet_from_pool(
            network.id, self._plan.subnetpool_id, self._plan.prefixlen,
            f"kuryr-ns-{name}"[:255])

    def _ensure_router_interface(self, subnet: Subnet) -> None:
        attached = self._neutron.ports(network_id=subnet.network_id,
                                       device_id=self._plan.router_id)
        if not any(port.device_owner in ROUTER_INTERFACE_OWNERS
                   and subnet.id in port.addresses.values() for port in attached):
            self._neutron.add_router_interface(self._plan.router_id, subnet.id)

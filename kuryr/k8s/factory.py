"""Builds the controller from kuryr.conf (the only place that reads its options)."""

from __future__ import annotations

import os
import socket
from collections.abc import Callable

from oslo_config import cfg

from kuryr.k8s import api
from kuryr.k8s.controller import LEASE_DURATION, Controller, Leadership
from kuryr.k8s.namespaces import NamespaceNetworks, PodNetworkPlan
from kuryr.k8s.nodes import NodePorts
from kuryr.k8s.policy_groups import ClusterView, PolicyGroups
from kuryr.k8s.services import ExternalAddresses, MemberSubnets, ServiceLoadBalancers
from kuryr.k8s.watch import Store
from kuryr.lbaas import octavia
from kuryr.neutron import marks
from kuryr.neutron.client import Neutron, connect
from kuryr.neutron.types import Subnet


class ControllerConfigError(Exception):
    """kuryr.conf's [kubernetes] section is incomplete for the chosen driver."""


def pod_network_plan(conf: cfg.ConfigOpts, neutron: Neutron) -> PodNetworkPlan:
    group = conf.kubernetes
    if not group.pod_subnetpool or not group.pod_router:
        raise ControllerConfigError("pod_network_driver = namespace needs [kubernetes] "
                                    "pod_subnetpool and pod_router")
    pool = neutron.find_subnetpool(group.pod_subnetpool)
    if pool is None:
        raise ControllerConfigError(f"subnetpool {group.pod_subnetpool!r} does not exist")
    router = neutron.find_router(group.pod_router)
    if router is None:
        raise ControllerConfigError(f"router {group.pod_router!r} does not exist")
    return PodNetworkPlan(subnetpool_id=pool.id, prefixlen=group.pod_subnet_prefixlen,
                          router_id=router.id)


def probe_cidrs(conf: cfg.ConfigOpts, neutron: Neutron) -> list[str]:
    """Where kubelet's probes come from: every node's own port on a pod network
    (the CNI daemons make them; 1 GET), and [kubernetes] pod_probe_cidrs."""
    nodes = [f"{fixed.ip_address}/{32 if ':' not in fixed.ip_address else 128}"
             for port in neutron.ports(device_owner=marks.K8S_HOST_DEVICE_OWNER)
             for fixed in port.fixed_ips]
    return sorted(set(conf.kubernetes.pod_probe_cidrs) | set(nodes))


def pod_groups(conf: cfg.ConfigOpts, neutron: Neutron) -> list[str]:
    """The groups of a pod no policy selects: [kubernetes] pod_security_groups, or
    (empty) those Neutron gives a port made without any, the project's default
    group, as the nodes' own ports show (1 GET).  A pod a policy selected
    gets them back when the policy goes."""
    if conf.kubernetes.pod_security_groups:
        return list(conf.kubernetes.pod_security_groups)
    nodes = neutron.ports(device_owner=marks.K8S_HOST_DEVICE_OWNER)
    groups = sorted({g for port in nodes for g in port.security_group_ids})
    if not groups:
        raise ControllerConfigError(
            "[kubernetes] pod_security_groups is empty and no node's own port (made by "
            "the CNI daemon at start) shows the project's default group: start a CNI "
            "daemon first, or name the groups")
    return groups


def member_subnets(conf: cfg.ConfigOpts, neutron: Neutron) -> MemberSubnets:
    """The subnets Services' endpoints are on: the pod network's (shared), or
    the namespaces' (from pod_subnetpool) and the nodes' (node_network)."""
    group = conf.kubernetes
    if group.pod_network_driver == "namespace":
        pool_id = pod_network_plan(conf, neutron).subnetpool_id
        node_net = neutron.find_network(group.node_network).id if group.node_network else None

        def listed() -> list[Subnet]:
            nodes = neutron.subnets(network_id=node_net) if node_net else []
            return neutron.subnets(subnet_pool_id=pool_id) + nodes
        return MemberSubnets(listed)
    if not group.pod_network:
        raise ControllerConfigError("[kubernetes] service_subnet needs pod_network "
                                    "(the shared driver's) to place Services' endpoints")
    pod_net = neutron.find_network(group.pod_network).id
    return MemberSubnets(lambda: neutron.subnets(network_id=pod_net))


def service_load_balancers(conf: cfg.ConfigOpts, neutron: Neutron,
                           kube: api.KubeApi) -> ServiceLoadBalancers | None:
    """None without [kubernetes] service_subnet: Services are left to others."""
    group = conf.kubernetes
    if not group.service_subnet:
        return None
    vip_subnet = neutron.find_subnet(group.service_subnet)
    external = (ExternalAddresses(neutron, neutron.find_network(group.external_network).id)
                if group.external_network else None)
    return ServiceLoadBalancers(octavia.connect(conf), kube, member_subnets(conf, neutron),
                                vip_subnet, external)


def lease_holder() -> str:
    """The Lease's holder: the pod's name in the Deployment (KURYR_POD_NAME, from
    the downward API: with hostNetwork every replica on a node has the node's
    host name), else this process's host name; stable across restarts of one
    replica (it leads again at once); not [DEFAULT] host, which a shared
    ConfigMap may set for all."""
    return os.environ.get("KURYR_POD_NAME") or socket.gethostname()


def build_controller(conf: cfg.ConfigOpts, on_lost: Callable[[], None]) -> Controller:
    """``on_lost``: called when this controller stops leading (the process must stop)."""
    group = conf.kubernetes
    neutron = connect(conf)
    kube = api.KubeApi(api.connect(conf))
    view = ClusterView(namespaces=Store("Namespace"), pods=Store("Pod"),
                       policies=Store("NetworkPolicy"))
    policies = PolicyGroups(neutron, kube, view, default_groups=pod_groups(conf, neutron),
                            always_allowed_ingress=probe_cidrs(conf, neutron))
    networks = (NamespaceNetworks(neutron, kube, pod_network_plan(conf, neutron))
                if group.pod_network_driver == "namespace" else None)
    holder = lease_holder()
    leadership = Leadership(lambda: kube.hold_lease(holder, LEASE_DURATION), on_lost,
                            release=lambda: kube.release_lease(holder))
    return Controller(kube, view, policies, networks, workers=group.controller_workers,
                      leadership=leadership, nodes=NodePorts(neutron, kube),
                      services=service_load_balancers(conf, neutron, kube))

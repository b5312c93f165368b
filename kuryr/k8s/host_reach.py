"""The node's own port on the pod network: how kubelet reaches its pods.

kubelet runs probes (HTTP, TCP) from the host's namespace, but a pod's
interface is a Neutron port on br-int, not on any host bridge.  So each node
has one Neutron port of its own on the pod network, plugged as an Open
vSwitch internal interface on br-int and addressed in the host's namespace:
the connected route of the pod subnet then carries the probes, through
OVN's security groups like any other packet (the node's port is in the
default group, whose rules admit its members).

namespace driver: every namespace has its own network, all attached to
pod_router; the node's port is then on one more network attached to it
([kubernetes] node_network) and the host routes the pod subnetpool's
prefixes via the router's address there.

Ownership: device_owner marks.K8S_HOST_DEVICE_OWNER, device_id = the node's
name, bound to this host.  Found again after a restart by those (1 GET).
"""

from __future__ import annotations

import ipaddress
import logging
from dataclasses import dataclass

from kuryr.binding import netlink
from kuryr.binding.ovs import OVS
from kuryr.neutron import marks
from kuryr.neutron.client import Neutron
from kuryr.neutron.types import NewPort, Port, Subnet

LOG = logging.getLogger(__name__)
INTERFACE_PREFIX = "k8s-"


def interface_for(network_id: str) -> str:
    """The node's interface on one network: k8s-<network id, 11 characters>
    (IFNAMSIZ allows 15).  One per network, so two daemons of one host on two
    networks (a test's beside the stack's) never take each other's."""
    return INTERFACE_PREFIX + network_id[:11]


@dataclass(frozen=True)
class HostReach:
    neutron: Neutron
    ovs: OVS
    node: str  # Kubernetes' node name (device_id)
    host: str  # Neutron's binding host
    bridge: str = "br-int"

    def ensure(self, network_id: str, subnet: Subnet, mtu: int | None = None) -> Port:
        """The node's port on the pod subnet, made reachable: found or made
        (1 GET, 0-1 POST), plugged and addressed (local)."""
        port = self._find_port(network_id) or self._create_port(network_id, subnet)
        address = next((f.ip_address for f in port.fixed_ips if f.subnet_id == subnet.id),
                       None)
        if address is None:
            raise RuntimeError(f"the node's port {port.id} has no address on {subnet.cidr}")
        cidr = f"{address}/{ipaddress.ip_network(subnet.cidr).prefixlen}"
        ifname = interface_for(network_id)
        self.ovs.plug_internal(self.bridge, ifname, port.id, port.mac_address)
        netlink.address_host_interface(ifname, cidr, mtu)
        # No router advertisements or autoconfiguration from a pod network.
        netlink.deafen_to_ipv6(ifname)
        LOG.info("node %s reaches its pods through %s (%s, Neutron port %s)",
                 self.node, ifname, cidr, port.id)
        return port

    def ensure_routed(self, network_id: str, subnet: Subnet, mtu: int | None,
                      prefixes: list[str]) -> Port:
        """namespace driver: the node's port on a network of its own ([kubernetes]
        node_network), plus host routes to ``prefixes`` (where namespaces' subnets
        come from) via the subnet's gateway, pod_router's interface there."""
        if not subnet.gateway_ip:
            raise RuntimeError(f"subnet {subnet.cidr} of the node network has no gateway: "
                               "attach it to pod_router so the node reaches namespaces")
        port = self.ensure(network_id, subnet, mtu)
        netlink.route_via(interface_for(network_id), prefixes, subnet.gateway_ip)
        LOG.info("node %s routes %s via %s", self.node, ", ".join(prefixes),
                 subnet.gateway_ip)
        return port

    def _find_port(self, network_id: str) -> Port | None:
        found = [p for p in self.neutron.ports(network_id=network_id, device_id=self.node,
                                               device_owner=marks.K8S_HOST_DEVICE_OWNER)
                 if p.binding_host_id == self.host]
        return found[0] if found else None

    def _create_port(self, network_id: str, subnet: Subnet) -> Port:
        return self.neutron.create_port(NewPort(
            network_id=network_id, fixed_ips=({"subnet_id": subnet.id},),
            device_owner=marks.K8S_HOST_DEVICE_OWNER, device_id=self.node,
            binding_host_id=self.host, name=marks.K8S_HOST_PORT_PREFIX + self.node))

    def remove(self, network_id: str) -> None:
        """Unplug the interface and delete the node's port (a node leaving)."""
        self.ovs.unplug(interface_for(network_id), self.bridge)
        port = self._find_port(network_id)
        if port is not None:
            self.neutron.delete_port(port.id)

"""The node's own port on the pod network: how kubelet reaches its pods.

kubelet runs probes (HTTP, TCP) from the host's namespace, but a pod's
interface is a Neutron port on br-int, not on any host bridge.  So each node
has one Neutron port of its own on the pod network, plugged as an Open
vSwitch internal interface on br-int and addressed in the host's namespace:
the connected route of the pod subnet then carries the probes, through
OVN's security groups like any other packet (the node's port is in the
default group, whose rules admit its members).

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
INTERFACE = "kuryr-k8s0"  # <= 15 characters (IFNAMSIZ)


@dataclass(frozen=True)
class HostReach:
    neutron: Neutron
    ovs: OVS
    node: str  # Kubernetes' node name (device_id)
    host: str  # Neutron's binding host
    bridge: str = "br-int"
    ifname: str = INTERFACE

    def ensure(self, network_id: str, subnet: Subnet, mtu: int | None = None) -> Port:
        """The node's port on the pod subnet, made reachable: found or made
        (1 GET, 0-1 POST), plugged and addressed (local)."""
        port = self._find_port(network_id) or self._create_port(network_id, subnet)
        address = next((f.ip_address for f in port.fixed_ips if f.subnet_id == subnet.id),
                       None)
        if address is None:
            raise RuntimeError(f"the node's port {port.id} has no address on {subnet.cidr}")
        cidr = f"{address}/{ipaddress.ip_network(subnet.cidr).prefixlen}"
        self.ovs.plug_internal(self.bridge, self.ifname, port.id, port.mac_address)
        netlink.address_host_interface(self.ifname, cidr, mtu)
        # No router advertisements or autoconfiguration from a pod network.
        netlink.deafen_to_ipv6(self.ifname)
        LOG.info("node %s reaches its pods through %s (%s, Neutron port %s)",
                 self.node, self.ifname, cidr, port.id)
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
        self.ovs.unplug(self.ifname, self.bridge)
        port = self._find_port(network_id)
        if port is not None:
            self.neutron.delete_port(port.id)

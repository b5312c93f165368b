"""The stack's external network: a flat Neutron network on br-ex whose only
other end is a network namespace ("outside").  br-ex has no uplink, so nothing
the stack does can reach the host's real networks."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import TYPE_CHECKING

from pyroute2 import IPRoute, NetNS, netns

from kuryr.aio import keystone, links, namespaces, switch
from kuryr.aio.layout import (
    NAMED_NETNS,
    OUTSIDE_NETNS,
    PHYSNET,
    PUBLIC_CIDR,
    PUBLIC_GATEWAY,
    PUBLIC_NETWORK,
    Layout,
)
from kuryr.neutron.client import Neutron, connect_endpoint

if TYPE_CHECKING:
    from openstack.network.v2._proxy import Proxy as NetworkProxy

VETH_BRIDGE_END = "aio-out-br"
VETH_NS_END = "aio-out-ns"


def stack_neutron(layout: Layout) -> Neutron:
    """An admin client of the stack's Neutron: no-auth, or Keystone's admin in
    keystone mode (creating an external network is admin-only)."""
    if layout.keystone_mode:
        return keystone.admin_neutron()
    return connect_endpoint(layout.neutron_url)


class Outside:
    name = "external-network"

    def __init__(self, layout: Layout) -> None:
        self.layout = layout

    @property
    def logs(self) -> list[Path]:
        return []

    def problems(self) -> list[str]:
        found = []
        if OUTSIDE_NETNS not in netns.listnetns():
            found.append(f"network namespace {OUTSIDE_NETNS} is missing")
        elif self._offloads_checksums():
            found.append(f"{VETH_NS_END} leaves checksums to the NIC (Geneve to simulated "
                         "hosts drops its frames): `up` turns that off")
        try:
            neutron = stack_neutron(self.layout)
            try:
                if neutron.api.find_network(PUBLIC_NETWORK) is None:
                    found.append(f"Neutron external network {PUBLIC_NETWORK!r} is missing")
            finally:
                neutron.close()
        except Exception as exc:  # noqa: BLE001 - reported, not raised
            found.append(f"cannot check Neutron network {PUBLIC_NETWORK!r}: {exc}")
        return found

    def up(self) -> None:
        self._plug_namespace()
        self._ensure_neutron_network()

    def _plug_namespace(self) -> None:
        if OUTSIDE_NETNS not in netns.listnetns():
            netns.create(OUTSIDE_NETNS)
        with IPRoute() as ipr:
            if not ipr.link_lookup(ifname=VETH_BRIDGE_END):
                ipr.link("add", ifname=VETH_BRIDGE_END, kind="veth",
                         peer={"ifname": VETH_NS_END, "net_ns_fd": OUTSIDE_NETNS})
                links.record(self.layout, [VETH_BRIDGE_END])
            idx = ipr.link_lookup(ifname=VETH_BRIDGE_END)[0]
            ipr.link("set", index=idx, state="up")
        prefix = ipaddress.ip_network(PUBLIC_CIDR).prefixlen
        with NetNS(OUTSIDE_NETNS) as ns:
            idx = ns.link_lookup(ifname=VETH_NS_END)[0]
            if not ns.get_addr(index=idx, address=PUBLIC_GATEWAY):
                ns.addr("add", index=idx, address=PUBLIC_GATEWAY, prefixlen=prefix)
            ns.link("set", index=idx, state="up")
            lo = ns.link_lookup(ifname="lo")[0]
            ns.link("set", index=lo, state="up")
        # Its frames reach containers of other hosts through a Geneve tunnel of
        # the userspace datapath, which drops frames carrying offload flags.
        namespaces.disable_tx_checksum(NAMED_NETNS / OUTSIDE_NETNS, VETH_NS_END)
        switch.vsctl("--may-exist", "add-port", "br-ex", VETH_BRIDGE_END)

    def _offloads_checksums(self) -> bool:
        try:
            return namespaces.tx_checksum(NAMED_NETNS / OUTSIDE_NETNS, VETH_NS_END)
        except OSError:
            return False  # no such interface: up makes it

    def _ensure_neutron_network(self) -> None:
        neutron = stack_neutron(self.layout)
        try:
            self._ensure_network_with(neutron.api)
        finally:
            neutron.close()

    @staticmethod
    def _ensure_network_with(api: NetworkProxy) -> None:
        net = api.find_network(PUBLIC_NETWORK)
        if net is None:
            net = api.create_network(
                name=PUBLIC_NETWORK, is_router_external=True,
                provider_network_type="flat", provider_physical_network=PHYSNET,
            )
        if not list(api.subnets(network_id=net.id)):
            base = ipaddress.ip_network(PUBLIC_CIDR)
            api.create_subnet(
                network_id=net.id, name=f"{PUBLIC_NETWORK}-subnet", ip_version=4,
                cidr=PUBLIC_CIDR, gateway_ip=PUBLIC_GATEWAY, is_dhcp_enabled=False,
                allocation_pools=[{"start": str(base[10]), "end": str(base[200])}],
            )

    def down(self) -> None:
        links.delete_created(self.layout, [VETH_BRIDGE_END])
        if OUTSIDE_NETNS in netns.listnetns():
            netns.remove(OUTSIDE_NETNS)


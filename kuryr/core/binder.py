"""The core's view of binding/: the Binder protocol (plugging by VIF type; the
core's unit tests fake it) and how a Neutron port becomes a VIF.  Binding never
sees Neutron: this module is where a port's binding turns into what to plug."""

from __future__ import annotations

from kuryr.binding.plugging import Binder
from kuryr.binding.vif import VIF
from kuryr.neutron.types import Port

__all__ = ["Binder", "vif_of"]


def vif_of(port: Port, mtu: int | None, default_bridge: str) -> VIF:
    """How the host's switch must see ``port`` (Neutron's binding decides the type)."""
    return VIF(port_id=port.id, mac=port.mac_address, vif_type=port.vif_type or "ovs",
               bridge=port.vif_bridge or default_bridge, mtu=mtu,
               addresses=tuple(f.ip_address for f in port.fixed_ips))

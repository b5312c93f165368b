"""Neutron resources as Kuryr sees them: small frozen values, not SDK objects.

The facade (kuryr/neutron/client.py) converts every SDK resource it reads into
one of these, so nothing outside kuryr/neutron depends on openstacksdk, and a
type checker sees exactly which fields Kuryr relies on.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Any

IPV4 = 4
IPV6 = 6


def _text(value: object) -> str:
    return "" if value is None else str(value)


def _tags(value: object) -> tuple[str, ...]:
    return tuple(str(t) for t in value) if isinstance(value, (list, tuple)) else ()


@dataclass(frozen=True)
class FixedIP:
    subnet_id: str
    ip_address: str


@dataclass(frozen=True)
class Port:
    id: str
    network_id: str
    mac_address: str
    fixed_ips: tuple[FixedIP, ...] = ()
    device_owner: str = ""
    device_id: str = ""
    binding_host_id: str = ""
    vif_type: str = ""
    vif_bridge: str | None = None  # binding:vif_details bridge_name
    tags: tuple[str, ...] = ()
    security_group_ids: tuple[str, ...] = ()
    description: str = ""
    name: str = ""
    dns_name: str = ""
    status: str = ""
    created_at: str = ""
    updated_at: str = ""
    revision_number: int = 0
    # (ip_address, mac_address) pairs this port may also send from (a VM's port
    # carrying containers' addresses); readable by the port's owner.
    allowed_address_pairs: tuple[tuple[str, str], ...] = ()

    @property
    def addresses(self) -> dict[str, str]:
        """ip -> subnet id."""
        return {f.ip_address: f.subnet_id for f in self.fixed_ips}

    @classmethod
    def from_sdk(cls, res: Any) -> Port:  # noqa: ANN401 - openstacksdk's Port
        details = getattr(res, "binding_vif_details", None) or {}
        return cls(
            id=_text(res.id), network_id=_text(res.network_id),
            mac_address=_text(res.mac_address),
            fixed_ips=tuple(FixedIP(_text(f.get("subnet_id")), _text(f.get("ip_address")))
                            for f in (res.fixed_ips or ())),
            device_owner=_text(res.device_owner), device_id=_text(res.device_id),
            binding_host_id=_text(getattr(res, "binding_host_id", "")),
            vif_type=_text(getattr(res, "binding_vif_type", "")),
            vif_bridge=details.get("bridge_name") if isinstance(details, dict) else None,
            tags=_tags(getattr(res, "tags", ())),
            security_group_ids=tuple(res.security_group_ids or ()),
            description=_text(res.description), name=_text(res.name),
            dns_name=_text(getattr(res, "dns_name", "")), status=_text(res.status),
            created_at=_text(res.created_at), updated_at=_text(res.updated_at),
            revision_number=int(getattr(res, "revision_number", 0) or 0),
            allowed_address_pairs=tuple(
                (_text(p.get("ip_address")), _text(p.get("mac_address")))
                for p in (getattr(res, "allowed_address_pairs", None) or ())),
        )


@dataclass(frozen=True)
class Subnet:
    id: str
    network_id: str
    cidr: str
    ip_version: int
    gateway_ip: str | None = None
    name: str = ""
    host_routes: tuple[tuple[str, str], ...] = ()
    allocation_pools: tuple[tuple[str, str], ...] = ()
    subnet_pool_id: str | None = None
    tags: tuple[str, ...] = ()
    project_id: str = ""

    @property
    def prefixlen(self) -> int:
        return ipaddress.ip_network(self.cidr).prefixlen

    @classmethod
    def from_sdk(cls, res: Any) -> Subnet:  # noqa: ANN401 - openstacksdk's Subnet
        return cls(
            id=_text(res.id), network_id=_text(res.network_id), cidr=_text(res.cidr),
            ip_version=int(res.ip_version or ipaddress.ip_network(res.cidr).version),
            gateway_ip=res.gateway_ip or None, name=_text(res.name),
            host_routes=tuple((_text(r["destination"]), _text(r["nexthop"]))
                              for r in (res.host_routes or ())),
            allocation_pools=tuple((_text(p["start"]), _text(p["end"]))
                                   for p in (res.allocation_pools or ())),
            subnet_pool_id=res.subnet_pool_id or None, tags=_tags(getattr(res, "tags", ())),
            project_id=_text(getattr(res, "project_id", "") or ""),
        )


@dataclass(frozen=True)
class Network:
    id: str
    name: str = ""
    mtu: int | None = None
    tags: tuple[str, ...] = ()
    created_at: str = ""
    updated_at: str = ""

    @classmethod
    def from_sdk(cls, res: Any) -> Network:  # noqa: ANN401 - openstacksdk's Network
        return cls(id=_text(res.id), name=_text(res.name), mtu=res.mtu or None,
                   tags=_tags(getattr(res, "tags", ())), created_at=_text(res.created_at),
                   updated_at=_text(res.updated_at))


@dataclass(frozen=True)
class SubnetPool:
    id: str
    name: str
    prefixes: tuple[str, ...]
    default_prefix_length: int | None = None
    project_id: str = ""

    @classmethod
    def from_sdk(cls, res: Any) -> SubnetPool:  # noqa: ANN401 - openstacksdk's SubnetPool
        length = res.default_prefix_length
        return cls(id=_text(res.id), name=_text(res.name),
                   prefixes=tuple(str(p) for p in (res.prefixes or ())),
                   default_prefix_length=int(length) if length else None,
                   project_id=_text(res.project_id))


@dataclass(frozen=True)
class SecurityGroup:
    id: str
    name: str = ""
    description: str = ""
    created_at: str = ""
    updated_at: str = ""
    tags: tuple[str, ...] = ()

    @classmethod
    def from_sdk(cls, res: Any) -> SecurityGroup:  # noqa: ANN401
        return cls(id=_text(res.id), name=_text(res.name), description=_text(res.description),
                   created_at=_text(res.created_at), updated_at=_text(res.updated_at),
                   tags=_tags(getattr(res, "tags", ())))


@dataclass(frozen=True)
class SecurityGroupRule:
    """A rule as Neutron stores it (protocol lower case; None: any)."""

    id: str
    security_group_id: str
    direction: str
    ethertype: str
    protocol: str | None = None
    port_range_min: int | None = None
    port_range_max: int | None = None
    remote_ip_prefix: str | None = None
    remote_group_id: str | None = None
    remote_address_group_id: str | None = None

    @classmethod
    def from_sdk(cls, res: Any) -> SecurityGroupRule:  # noqa: ANN401
        def number(value: object) -> int | None:
            return None if value is None else int(str(value))

        return cls(id=_text(res.id), security_group_id=_text(res.security_group_id),
                   direction=_text(res.direction), ethertype=_text(res.ether_type),
                   protocol=str(res.protocol).lower() if res.protocol else None,
                   port_range_min=number(res.port_range_min),
                   port_range_max=number(res.port_range_max),
                   remote_ip_prefix=res.remote_ip_prefix or None,
                   remote_group_id=res.remote_group_id or None,
                   remote_address_group_id=getattr(res, "remote_address_group_id", None) or None)


@dataclass(frozen=True)
class AddressGroup:
    id: str
    name: str = ""
    description: str = ""
    addresses: frozenset[str] = frozenset()  # CIDRs, as Neutron normalises them

    @classmethod
    def from_sdk(cls, res: Any) -> AddressGroup:  # noqa: ANN401
        return cls(id=_text(res.id), name=_text(res.name), description=_text(res.description),
                   addresses=frozenset(str(a) for a in (res.addresses or ())))


@dataclass(frozen=True)
class Router:
    id: str
    name: str = ""


@dataclass(frozen=True)
class FloatingIP:
    id: str
    floating_ip_address: str
    port_id: str | None = None  # the port it forwards to


@dataclass(frozen=True)
class PortForwarding:
    id: str


@dataclass(frozen=True)
class SubPort:
    port_id: str
    segmentation_id: int  # the VLAN id the VM sees the port's frames tagged with
    segmentation_type: str = "vlan"


@dataclass(frozen=True)
class Trunk:
    """A VM port's trunk: its sub-ports reach the VM tagged with their VLAN id."""

    id: str
    port_id: str  # the parent: the VM's own port
    name: str = ""
    status: str = ""
    sub_ports: tuple[SubPort, ...] = ()

    @classmethod
    def from_sdk(cls, res: Any) -> Trunk:  # noqa: ANN401 - openstacksdk's Trunk
        return cls(id=_text(res.id), port_id=_text(res.port_id), name=_text(res.name),
                   status=_text(getattr(res, "status", "")),
                   sub_ports=tuple(SubPort(_text(s.get("port_id")),
                                           int(s.get("segmentation_id") or 0),
                                           _text(s.get("segmentation_type")) or "vlan")
                                   for s in (res.sub_ports or ())))


@dataclass(frozen=True)
class NewPort:
    """What Kuryr asks Neutron for when it creates a port."""

    network_id: str
    fixed_ips: tuple[dict[str, str], ...]
    device_owner: str
    binding_host_id: str | None  # None: not sent (nested: Neutron binds it through the VM)
    name: str
    mac_address: str = ""
    dns_name: str = ""
    device_id: str = ""
    tags: tuple[str, ...] = field(default=())
    security_group_ids: tuple[str, ...] = field(default=())  # empty: the project's default

    def body(self) -> dict[str, object]:
        attrs: dict[str, object] = {
            "network_id": self.network_id, "fixed_ips": [dict(f) for f in self.fixed_ips],
            "device_owner": self.device_owner, "name": self.name,
        }
        if self.binding_host_id is not None:
            attrs["binding_host_id"] = self.binding_host_id
        for key in ("mac_address", "dns_name", "device_id"):
            if getattr(self, key):
                attrs[key] = getattr(self, key)
        if self.tags:
            attrs["tags"] = list(self.tags)
        if self.security_group_ids:
            attrs["security_group_ids"] = list(self.security_group_ids)
        return attrs

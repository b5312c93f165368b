"""Fakes at the core's boundaries: the Neutron facade and the binder.

Pure logic only: an in-memory Neutron that allocates addresses, refuses a
taken one with Conflict and honours if-revision, and a host side that
remembers what was plugged.  The real ones are exercised by the integration
tests against neutron-server, OVN and OVS.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import itertools
import uuid
from collections import Counter
from collections.abc import Mapping, Sequence

from kuryr import errors
from kuryr.binding.vif import VIF
from kuryr.neutron import marks
from kuryr.neutron.client import RequestCounter
from kuryr.neutron.types import (
    FixedIP,
    Network,
    NewPort,
    Port,
    SecurityGroup,
    Subnet,
    SubnetPool,
)


class FakeNeutron:
    def __init__(self) -> None:
        self.counter = RequestCounter()
        self.networks: dict[str, Network] = {}
        self.subnets_: dict[str, Subnet] = {}
        self.ports_: dict[str, Port] = {}
        self.groups: dict[str, SecurityGroup] = {}
        self.subnetpools_: dict[str, SubnetPool] = {}
        self.calls: Counter[str] = Counter()
        self.delete_network_conflicts = 0  # the next N delete_network calls conflict
        self._macs = itertools.count(1)

    # -- helpers for tests ----------------------------------------------------------
    def add_network(self, name: str = "", tags: tuple[str, ...] = ()) -> Network:
        net = Network(id=str(uuid.uuid4()), name=name, mtu=1442, tags=tags)
        self.networks[net.id] = net
        return net

    def add_subnet(self, network_id: str, cidr: str, gateway: str | None = None) -> Subnet:
        subnet = Subnet(id=str(uuid.uuid4()), network_id=network_id, cidr=cidr,
                        ip_version=ipaddress.ip_network(cidr).version,
                        gateway_ip=gateway, name="user-subnet")
        self.subnets_[subnet.id] = subnet
        return subnet

    def add_port(self, network_id: str, address: str, **attrs: object) -> Port:
        subnet = next(s for s in self.subnets_.values() if s.network_id == network_id
                      and ipaddress.ip_address(address) in ipaddress.ip_network(s.cidr))
        port = Port(id=str(uuid.uuid4()), network_id=network_id, mac_address=self._mac(),
                    fixed_ips=(FixedIP(subnet.id, address),), **attrs)  # type: ignore[arg-type]
        self.ports_[port.id] = port
        return port

    def _mac(self) -> str:
        n = next(self._macs)
        return f"fa:16:3e:00:{n // 256:02x}:{n % 256:02x}"

    def _used(self, subnet_id: str) -> set[str]:
        return {f.ip_address for p in self.ports_.values() for f in p.fixed_ips
                if f.subnet_id == subnet_id}

    def _allocate(self, subnet_id: str, wanted: str | None) -> str:
        subnet = self.subnets_[subnet_id]
        used = self._used(subnet_id) | ({subnet.gateway_ip} if subnet.gateway_ip else set())
        if wanted:
            if wanted in used:
                raise errors.Conflict(f"IP address {wanted} already allocated in subnet")
            return wanted
        net = ipaddress.ip_network(subnet.cidr)
        for host in itertools.islice(net.hosts(), 1000):
            if str(host) not in used:
                return str(host)
        raise errors.Conflict("no more addresses")

    # -- the facade ---------------------------------------------------------------------
    def extensions(self) -> set[str]:
        return {"dns-integration"}

    def create_port(self, new: NewPort) -> Port:
        self.calls["create_port"] += 1
        fixed = []
        for spec in new.fixed_ips:
            subnet_id = spec.get("subnet_id") or next(
                s.id for s in self.subnets_.values() if s.network_id == new.network_id
                and ipaddress.ip_address(spec["ip_address"]) in ipaddress.ip_network(s.cidr))
            fixed.append(FixedIP(subnet_id, self._allocate(subnet_id, spec.get("ip_address"))))
        port = Port(id=str(uuid.uuid4()), network_id=new.network_id,
                    mac_address=new.mac_address or self._mac(), fixed_ips=tuple(fixed),
                    device_owner=new.device_owner, device_id=new.device_id,
                    binding_host_id=new.binding_host_id, vif_type="ovs", name=new.name,
                    tags=new.tags, revision_number=1)
        self.ports_[port.id] = port
        return port

    def create_ports(self, ports: list[NewPort]) -> list[Port]:
        return [self.create_port(p) for p in ports]

    def update_port(self, port_id: str, *, if_revision: int | None = None,
                    fixed_ips: list[dict[str, str]] | None = None, **attrs: object) -> Port:
        self.calls["update_port"] += 1
        port = self.get_port(port_id)
        if if_revision is not None and if_revision != port.revision_number:
            raise errors.Conflict(f"update port {port_id}: revision mismatch")
        changes = {k: v for k, v in attrs.items() if v is not None}
        if "security_group_ids" in changes:
            changes["security_group_ids"] = tuple(changes["security_group_ids"])  # type: ignore[arg-type]
        if fixed_ips is not None:
            others = {f.ip_address for p in self.ports_.values() if p.id != port_id
                      for f in p.fixed_ips}
            for f in fixed_ips:
                if f.get("ip_address") in others:
                    raise errors.Conflict(f"IP address {f['ip_address']} already allocated")
            changes["fixed_ips"] = tuple(FixedIP(f["subnet_id"], f["ip_address"])
                                         for f in fixed_ips)
        port = dataclasses.replace(port, revision_number=port.revision_number + 1,
                                   **changes)  # type: ignore[arg-type]
        self.ports_[port_id] = port
        return port

    def set_port_tags(self, port_id: str, tags: list[str]) -> None:
        port = self.get_port(port_id)
        self.ports_[port_id] = dataclasses.replace(
            port, tags=tuple(sorted(set(tags))), revision_number=port.revision_number + 1)

    def delete_port(self, port_id: str) -> None:
        self.calls["delete_port"] += 1
        self.ports_.pop(port_id, None)

    def get_port(self, port_id: str) -> Port:
        if port_id not in self.ports_:
            raise errors.NotFound(f"port {port_id}")
        return self.ports_[port_id]

    def ports(self, network_id: str | None = None, device_id: str | None = None,
              device_owner: str | Sequence[str] | None = None,
              binding_host_id: str | None = None,
              ip_address: str | None = None, tags: str | None = None,
              mac_address: str | None = None) -> list[Port]:
        self.calls["ports"] += 1
        found = list(self.ports_.values())
        if device_owner is not None and not isinstance(device_owner, str):
            found = [p for p in found if p.device_owner in device_owner]
            device_owner = None
        for attr, value in (("network_id", network_id), ("device_id", device_id),
                            ("device_owner", device_owner),
                            ("binding_host_id", binding_host_id)):
            if value is not None:
                found = [p for p in found if getattr(p, attr) == value]
        if ip_address is not None:
            found = [p for p in found if ip_address in p.addresses]
        if tags is not None:
            found = [p for p in found if tags in p.tags]
        if mac_address is not None:
            found = [p for p in found if p.mac_address == mac_address]
        return found

    def create_network(self, name: str, shared: bool = False) -> Network:
        net = Network(id=str(uuid.uuid4()), name=name, mtu=1442)
        self.networks[net.id] = net
        return net

    def set_network_tags(self, network_id: str, tags: object) -> None:
        self.networks[network_id] = dataclasses.replace(
            self.networks[network_id], tags=tuple(sorted(set(tags))))  # type: ignore[call-overload]

    def get_network(self, network_id: str) -> Network:
        if network_id not in self.networks:
            raise errors.NotFound(f"network {network_id}")
        return self.networks[network_id]

    def find_network(self, ref: str) -> Network:
        for net in self.networks.values():
            if ref in (net.id, net.name):
                return net
        raise errors.NotFound(f"Neutron network {ref!r} does not exist")

    def networks_tagged(self, tags: list[str]) -> list[Network]:
        self.calls["networks_tagged"] += 1
        return [n for n in self.networks.values() if set(tags) <= set(n.tags)]

    def delete_network(self, network_id: str) -> None:
        if self.delete_network_conflicts:
            self.delete_network_conflicts -= 1
            raise errors.Conflict(f"network {network_id} is in use")
        in_use = [p for p in self.ports_.values() if p.network_id == network_id]
        if in_use:
            raise errors.Conflict(f"network {network_id} has {len(in_use)} ports")
        self.networks.pop(network_id, None)
        for sid in [s for s, v in self.subnets_.items() if v.network_id == network_id]:
            del self.subnets_[sid]

    def create_subnet(self, network_id: str, cidr: str, name: str, gateway_ip: str | None,
                      enable_dhcp: bool, subnet_pool_id: str | None = None,
                      allocation_pools: list[tuple[str, str]] | None = None) -> Subnet:
        subnet = Subnet(id=str(uuid.uuid4()), network_id=network_id, cidr=cidr,
                        ip_version=ipaddress.ip_network(cidr).version, gateway_ip=gateway_ip,
                        name=name, allocation_pools=tuple(allocation_pools or ()),
                        subnet_pool_id=subnet_pool_id)
        self.subnets_[subnet.id] = subnet
        return subnet

    def subnets(self, network_id: str | None = None, cidr: str | None = None,
                subnet_pool_id: str | list[str] | None = None,
                ip_version: int | None = None) -> list[Subnet]:
        self.calls["subnets"] += 1
        found = list(self.subnets_.values())
        if network_id is not None:
            found = [s for s in found if s.network_id == network_id]
        if cidr is not None:
            found = [s for s in found if s.cidr == cidr]
        if subnet_pool_id is not None:
            pools = [subnet_pool_id] if isinstance(subnet_pool_id, str) else subnet_pool_id
            found = [s for s in found if s.subnet_pool_id in pools]
        if ip_version is not None:
            found = [s for s in found if s.ip_version == ip_version]
        return found

    def subnetpools(self, ip_version: int | None = None) -> list[SubnetPool]:
        self.calls["subnetpools"] += 1
        return [p for p in self.subnetpools_.values() if ip_version is None
                or ipaddress.ip_network(p.prefixes[0]).version == ip_version]

    def create_subnetpool(self, name: str, prefixes: list[str], default_prefix_length: int,
                          minimum_prefix_length: int, description: str) -> SubnetPool:
        self.calls["create_subnetpool"] += 1
        pool = SubnetPool(id=str(uuid.uuid4()), name=name, prefixes=tuple(prefixes),
                          default_prefix_length=default_prefix_length)
        self.subnetpools_[pool.id] = pool
        return pool

    def find_subnetpool(self, name_or_id: str) -> SubnetPool | None:
        return next((p for p in self.subnetpools_.values() if name_or_id in (p.id, p.name)),
                    None)

    def delete_subnetpool(self, pool_id: str) -> None:
        self.calls["delete_subnetpool"] += 1
        if any(s.subnet_pool_id == pool_id for s in self.subnets_.values()):
            raise errors.Conflict(f"subnetpool {pool_id} is in use")
        self.subnetpools_.pop(pool_id, None)

    def get_subnet(self, subnet_id: str) -> Subnet:
        return self.subnets_[subnet_id]

    def delete_subnet(self, subnet_id: str) -> None:
        self.subnets_.pop(subnet_id, None)

    def create_security_group(self, name: str, description: str = "") -> SecurityGroup:
        group = SecurityGroup(id=str(uuid.uuid4()), name=name, description=description)
        self.groups[group.id] = group
        return group

    def create_security_group_rules(self, rules: list[dict[str, object]]) -> None:
        pass

    def security_groups(self, fields: list[str] | None = None,
                        description: str | None = None) -> list[SecurityGroup]:
        self.group_listings = [*getattr(self, "group_listings", []), description]
        return [g for g in self.groups.values()
                if description is None or g.description == description]

    def delete_security_group(self, group_id: str) -> None:
        self.groups.pop(group_id, None)


class FakeBinder:
    """The host side: which veths exist, where their container ends are, and the
    endpoint each OVS interface names."""

    def __init__(self) -> None:
        self.plugged: dict[str, VIF] = {}  # host ifname ->
        self.in_container: set[str] = set()  # host ifnames whose container end moved
        self.endpoints: dict[str, str] = {}  # host ifname -> endpoint id
        self.records: dict[str, dict[str, str]] = {}  # host ifname -> plug-time record

    def plug(self, vif: VIF, endpoint_id: str = "",
             record: Mapping[str, str] | None = None) -> None:
        self.plugged[vif.host_ifname] = vif
        if endpoint_id:
            self.endpoints[vif.host_ifname] = endpoint_id
        if record:
            self.records[vif.host_ifname] = dict(record)

    def unplug(self, vif: VIF) -> None:
        self.plugged.pop(vif.host_ifname, None)
        self.endpoints.pop(vif.host_ifname, None)
        self.records.pop(vif.host_ifname, None)
        self.in_container.discard(vif.host_ifname)

    def wait_wired(self, vif: VIF, timeout: float) -> bool | None:
        return vif.host_ifname in self.plugged

    def forget_endpoint(self, vif: VIF) -> None:
        self.endpoints.pop(vif.host_ifname, None)
        self.records.pop(vif.host_ifname, None)

    def endpoint_of(self, vif: VIF) -> str | None:
        return self.endpoints.get(vif.host_ifname)

    def endpoint_record_of(self, vif: VIF) -> dict[str, str]:
        return dict(self.records.get(vif.host_ifname, {}))

    def port_of_endpoint(self, endpoint_id: str) -> str | None:
        for ifname, ep in self.endpoints.items():
            if ep == endpoint_id:
                return self.plugged[ifname].port_id
        return None

    def is_plugged(self, vif: VIF) -> bool:
        return vif.host_ifname in self.plugged

    def is_free(self, vif: VIF) -> bool:
        return vif.host_ifname in self.plugged and vif.host_ifname not in self.in_container

    # what Docker does after Join / before DeleteEndpoint
    def container_takes(self, port_id: str) -> None:
        self.in_container.add(VIF(port_id=port_id, mac="").host_ifname)

    def container_leaves(self, port_id: str) -> None:
        self.in_container.discard(VIF(port_id=port_id, mac="").host_ifname)


def kuryr_ports(neutron: FakeNeutron) -> list[Port]:
    return [p for p in neutron.ports_.values() if p.device_owner in marks.KURYR_DEVICE_OWNERS]

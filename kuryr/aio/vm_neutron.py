"""A simulated VM as Neutron sees one that Nova made: a port on the VMs'
network (bound to this host, device_owner compute:nova), and in vlan mode a
trunk with that port as parent.  Everything is found by name before it is
made; deleting the VM deletes what Nova's delete would, plus the ports the
VM's nested Kuryr left (as if the VM had been killed)."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import TYPE_CHECKING

from kuryr.aio import procs
from kuryr.aio.layout import VmLayout
from kuryr.neutron import marks

if TYPE_CHECKING:
    from openstack.network.v2._proxy import Proxy as NetworkProxy
    from openstack.network.v2.network import Network
    from openstack.network.v2.port import Port
    from openstack.network.v2.security_group import SecurityGroup
    from openstack.network.v2.subnet import Subnet
    from openstack.network.v2.trunk import Trunk

VM_NETWORK = "kuryr-aio-vms"
VM_CIDR = "192.168.250.0/24"
VM_GATEWAY = "192.168.250.1"  # no router: nothing answers there
VM_POOL = {"start": "192.168.250.10", "end": "192.168.250.250"}
VM_SECURITY_GROUP = "kuryr-aio-vm"
VM_DEVICE_OWNER = "compute:nova"
# device_owner prefixes of the ports Kuryr makes (compute:kuryr, kuryr:pool,
# compute:kuryr-k8s, kuryr-k8s:pool, ...).
KURYR_OWNER_PREFIXES = ("compute:kuryr", "kuryr")
# Ports Neutron makes on a network and deletes with it.
NEUTRON_NETWORK_OWNERS = ("network:distributed", "network:dhcp")
PUBLISH_ROUTER = "kuryr-publish"  # [publish] router_name: its default, kuryr-aio's
PORT_ACTIVE_TIMEOUT = 30.0


@dataclass(frozen=True)
class VmPort:
    """What the VM's NIC and init need of its Neutron port."""

    id: str
    mac: str
    address: str  # CIDR form: the fixed IP with the subnet's prefix length
    mtu: int

    @property
    def ip(self) -> str:
        return str(ipaddress.ip_interface(self.address).ip)


def _project(project_id: str | None) -> dict[str, str]:
    """In keystone mode the VM is the project of Kuryr's user (its nested Kuryr,
    a non-admin, must edit the VM's trunk and port); no-auth has one project."""
    return {"project_id": project_id} if project_id else {}


def ensure_network(api: NetworkProxy,
                   project_id: str | None = None) -> tuple[Network, Subnet]:
    """The VMs' network and its IPv4 subnet (no DHCP: `vm up` addresses the VM)."""
    net = api.find_network(VM_NETWORK)
    if net is None:
        net = api.create_network(name=VM_NETWORK, **_project(project_id))
    subnets = [s for s in api.subnets(network_id=net.id) if s.cidr == VM_CIDR]
    subnet = subnets[0] if subnets else api.create_subnet(
        network_id=net.id, name=f"{VM_NETWORK}-subnet", ip_version=4, cidr=VM_CIDR,
        gateway_ip=VM_GATEWAY, is_dhcp_enabled=False, allocation_pools=[VM_POOL],
        **_project(project_id))
    return net, subnet


def ensure_security_group(api: NetworkProxy,
                          project_id: str | None = None) -> SecurityGroup:
    """Everything in, from anywhere, both families (Neutron adds the egress rules)."""
    group = api.find_security_group(VM_SECURITY_GROUP, ignore_missing=True,
                                    **_project(project_id))
    if group is None:
        group = api.create_security_group(
            name=VM_SECURITY_GROUP, description="kuryr-aio simulated VMs: all ingress",
            **_project(project_id))
    have = {rule.ether_type for rule in api.security_group_rules(security_group_id=group.id)
            if rule.direction == "ingress" and rule.protocol is None
            and rule.remote_ip_prefix is None and rule.remote_group_id is None}
    for family in ("IPv4", "IPv6"):
        if family not in have:
            api.create_security_group_rule(security_group_id=group.id, direction="ingress",
                                           ether_type=family, **_project(project_id))
    return group


def find_port(api: NetworkProxy, vm: VmLayout) -> Port | None:
    ports = list(api.ports(name=vm.neutron_name, device_id=vm.device_id))
    return ports[0] if ports else None


def ensure_port(api: NetworkProxy, vm: VmLayout, host: str,
                project_id: str | None = None) -> VmPort:
    """The VM's port (made if missing), bound to ``host`` as Nova binds it."""
    net, subnet = ensure_network(api, project_id)
    groups = security_groups(api, net.project_id, project_id)
    port = find_port(api, vm)
    if port is None:
        port = api.create_port(
            name=vm.neutron_name, network_id=net.id, device_owner=VM_DEVICE_OWNER,
            device_id=vm.device_id, binding_host_id=host, security_group_ids=groups,
            fixed_ips=[{"subnet_id": subnet.id}], **_project(project_id))
    elif port.binding_host_id != host or set(port.security_group_ids or []) != set(groups):
        port = api.update_port(port, binding_host_id=host, security_group_ids=groups)
    return vm_port_of(port, subnet.cidr, net.mtu)


def security_groups(api: NetworkProxy, owner: str, project_id: str | None) -> list[str]:
    """The project's "default" group, as Nova gives a VM (members of a group
    reach each other: the host's containers on the VMs' network are in theirs),
    and the VMs' own group that lets everything in."""
    default = [group.id for group in api.security_groups(name="default", project_id=owner)]
    return [*default[:1], ensure_security_group(api, project_id).id]


def vm_port_of(port: Port, cidr: str, mtu: int) -> VmPort:
    prefixlen = ipaddress.ip_network(cidr).prefixlen
    ips = [ip["ip_address"] for ip in port.fixed_ips or []
           if ipaddress.ip_address(ip["ip_address"]) in ipaddress.ip_network(cidr)]
    if not ips:
        raise procs.StackError(f"Neutron port {port.name} ({port.id}) has no address "
                               f"in {cidr}")
    return VmPort(id=port.id, mac=port.mac_address, address=f"{ips[0]}/{prefixlen}", mtu=mtu)


def ensure_trunk(api: NetworkProxy, vm: VmLayout, port_id: str,
                 project_id: str | None = None) -> Trunk:
    """The trunk whose parent is the VM's port (nested-vlan adds the subports)."""
    trunk = api.find_trunk(vm.neutron_name)
    if trunk is None:
        trunk = api.create_trunk(name=vm.neutron_name, port_id=port_id, **_project(project_id))
    elif trunk.port_id != port_id:
        raise procs.StackError(f"Neutron trunk {vm.neutron_name} has another parent port "
                               f"({trunk.port_id}, not {port_id}): delete it")
    return trunk


def wait_active(api: NetworkProxy, port_id: str,
                timeout: float = PORT_ACTIVE_TIMEOUT) -> bool:
    return procs.wait_for(lambda: api.get_port(port_id).status == "ACTIVE", timeout,
                          interval=0.2)


def wait_not_active(api: NetworkProxy, port_id: str, timeout: float = 10) -> bool:
    return procs.wait_for(lambda: api.get_port(port_id).status != "ACTIVE", timeout,
                          interval=0.2)


def port_status(api: NetworkProxy, vm: VmLayout) -> str | None:
    port = find_port(api, vm)
    return None if port is None else str(port.status)


def is_kuryrs(port: Port, vm_port_id: str | None = None) -> bool:
    """Made by a Kuryr: its owner, its name, or the tag naming the VM.  Neutron
    sets a sub-port's device_owner to "trunk:subport", so the owner alone does
    not tell."""
    return ((port.device_owner or "").startswith(KURYR_OWNER_PREFIXES)
            or (port.name or "").startswith(marks.PORT_NAME_PREFIX)
            or (vm_port_id is not None and marks.vm_tag(vm_port_id) in (port.tags or [])))


def nested_ports(api: NetworkProxy, vm_port: Port, trunk: Trunk | None) -> list[Port]:
    """The ports the VM's nested Kuryr made: tagged with the VM's port, on its
    trunk, or holding one of its allowed address pairs; Kuryr's only."""
    found = {port.id: port for port in api.ports(tags=marks.vm_tag(vm_port.id))}
    for sub in trunk.sub_ports if trunk is not None else []:
        port = api.get_port(sub["port_id"])
        found[port.id] = port
    # By address alone: Kuryr's pairs carry the VM port's own MAC (Neutron 29
    # with OVN takes no other but VRRP ones), not the address holder's.
    paired = {pair.get("ip_address") for pair in vm_port.allowed_address_pairs or []}
    if paired:
        for port in api.ports(network_id=vm_port.network_id):
            if any(ip["ip_address"] in paired for ip in port.fixed_ips or []):
                found[port.id] = port
    return [port for port in found.values()
            if port.id != vm_port.id and is_kuryrs(port, vm_port.id)]


def delete_vm(api: NetworkProxy, vm: VmLayout) -> list[str]:
    """What deleting the VM in Nova deletes (its trunk, its port), and the ports
    its nested Kuryr made; returns what was deleted.  Idempotent."""
    deleted = []
    trunk = api.find_trunk(vm.neutron_name)
    port = find_port(api, vm)
    leftovers = nested_ports(api, port, trunk) if port is not None else []
    if trunk is not None:
        if trunk.sub_ports:
            api.delete_trunk_subports(trunk, [{"port_id": sub["port_id"]}
                                              for sub in trunk.sub_ports])
        api.delete_trunk(trunk, ignore_missing=True)
        deleted.append(f"trunk {trunk.name}")
    for leftover in leftovers:
        api.delete_port(leftover, ignore_missing=True)
        deleted.append(f"port {leftover.id} ({leftover.device_owner}, nested Kuryr's)")
    if port is not None:
        api.delete_port(port, ignore_missing=True)
        deleted.append(f"port {port.name}")
    return deleted


def kuryr_host(vm: VmLayout) -> str:
    """[DEFAULT] host of the VM's Kuryr: what it tags its networks with."""
    return f"vm-{vm.name}"


def delete_vm_networks(api: NetworkProxy, vm: VmLayout) -> list[str]:
    return delete_kuryr_networks(api, kuryr_host(vm))


def delete_kuryr_networks(api: NetworkProxy, kuryr_host: str) -> list[str]:
    """The Neutron networks of the Docker networks of a VM's or a host's Kuryr
    (tagged with its [DEFAULT] host) and the ports Kuryr left on them (its
    pool's): wiping that machine's Docker state leaves nobody who could remove
    them.  Neutron's own ports (metadata, DHCP) go with the network; an
    interface of Kuryr's publishing router is detached first.  A network with a
    port of anyone else's stays, whole.  Subnet pools stay (Kuryr finds them by
    CIDR, others may share one)."""
    deleted = []
    for net in api.networks(tags=marks.host_tag(kuryr_host)):
        ports = list(api.ports(network_id=net.id))
        interfaces = [port for port in ports if _publishing_interface(api, port)]
        others = [port for port in ports if not is_kuryrs(port) and port not in interfaces
                  and port.device_owner not in NEUTRON_NETWORK_OWNERS]
        if others:
            continue
        for port in interfaces:
            api.remove_interface_from_router(port.device_id, port=port.id)
            deleted.append(f"interface of router {PUBLISH_ROUTER} on {net.name}")
        for port in ports:
            if is_kuryrs(port):
                api.delete_port(port, ignore_missing=True)
                deleted.append(f"port {port.id} ({port.device_owner}, Kuryr's)")
        api.delete_network(net, ignore_missing=True)
        deleted.append(f"network {net.name}")
    return deleted


def _publishing_interface(api: NetworkProxy, port: Port) -> bool:
    if port.device_owner != "network:router_interface":
        return False
    router = api.find_router(port.device_id)
    return router is not None and router.name == PUBLISH_ROUTER


def delete_host_leftovers(api: NetworkProxy, hostname: str) -> list[str]:
    """What a simulated host's Kuryr left in Neutron once the host is wiped:
    Docker's ports bound to it, its networks, its expose groups and the
    floating IP it publishes on.  Another host's are never matched: ports by
    their exact binding:host_id, the rest by the exact host tag or mark."""
    deleted = []
    for port in api.ports(**{"binding:host_id": hostname}):  # the SDK's name for it
        if port.binding_host_id == hostname and \
                (port.device_owner or "") in marks.DOCKER_OWNERS.all:
            api.delete_port(port, ignore_missing=True)
            deleted.append(f"port {port.id} ({port.device_owner})")
    # Its floating IP before its networks: forwardings keep a subnet on the router.
    for fip in api.ips(description=marks.publishing_ip_description(hostname)):
        api.delete_ip(fip, ignore_missing=True)
        deleted.append(f"floating IP {fip.floating_ip_address}")
    deleted += delete_kuryr_networks(api, hostname)
    for group in api.security_groups():
        if marks.is_hosts_expose_group(group.name or "", group.description or "", hostname):
            api.delete_security_group(group, ignore_missing=True)
            deleted.append(f"security group {group.name}")
    return deleted

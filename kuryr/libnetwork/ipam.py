"""Docker's IPAM driver on Neutron: pools are subnets, addresses are ports.

Neutron requests (see docs/performance.md):
  RequestPool with --subnet: 0; without: 1 GET (free CIDRs of the pool)
  RequestAddress for the gateway: 0; for a container: 1 POST (both families
  of a dual-stack network in the same port), the second family 0
  ReleaseAddress: 0 when DeleteEndpoint already removed the port
"""

from __future__ import annotations

import ipaddress
import logging

from kuryr import errors
from kuryr.libnetwork import models, networks
from kuryr.libnetwork.context import Context, PendingPool, PortInfo, SubnetInfo
from kuryr.neutron import marks
from kuryr.publish import spec

LOG = logging.getLogger(__name__)

POOL_OPTIONS = ("neutron.pool.uuid", "neutron.pool.name")
POOL_V6_OPTIONS = ("neutron.pool.v6.uuid", "neutron.pool.v6.name")
SUBNET_OPTIONS = ("neutron.subnet.uuid", "neutron.subnet.name")
SUBNET_V6_OPTIONS = ("neutron.subnet.v6.uuid", "neutron.subnet.v6.name")
DEFAULT_PREFIXLEN = {4: 24, 6: 64}
PAIR_TIMEOUT = 10.0


def _first_option(options: dict[str, str], keys: tuple[str, ...]) -> str | None:
    return next((options[k] for k in keys if options.get(k)), None)


def _network(value: str, what: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    try:
        return ipaddress.ip_network(value)
    except ValueError as exc:
        raise errors.InvalidInput(f"{what} {value!r} is not a valid CIDR: {exc}") from exc


def capabilities() -> models.IpamCapabilities:
    # Docker then leaves the MAC to the driver: the container takes the MAC of
    # its Neutron port, so a port made ahead of time (the pool) is used as is.
    return models.IpamCapabilities(RequiresMACAddress=False, RequiresRequestReplay=False)


def default_address_spaces(ctx: Context) -> models.AddressSpaces:
    return models.AddressSpaces(
        LocalDefaultAddressSpace=ctx.conf.local_default_address_space,
        GlobalDefaultAddressSpace=ctx.conf.global_default_address_space,
    )


# -- pools ---------------------------------------------------------------------------
def request_pool(ctx: Context, req: models.RequestPoolRequest) -> models.RequestPoolResponse:
    options = req.Options or {}
    version = 6 if req.V6 else 4
    subnet_ref = _first_option(options, SUBNET_V6_OPTIONS if req.V6 else SUBNET_OPTIONS)
    if subnet_ref:
        return _adopt_subnet_pool(ctx, subnet_ref, version)
    pool_ref = _first_option(options, POOL_V6_OPTIONS if req.V6 else POOL_OPTIONS)
    subnetpool = ctx.neutron.find_subnetpool(pool_ref) if pool_ref else None
    if pool_ref and subnetpool is None:
        raise errors.NotFound(f"Neutron subnetpool {pool_ref!r} does not exist")
    if req.Pool:
        cidr = _network(req.Pool, "pool")
        if cidr.version != version:
            raise errors.InvalidInput(f"pool {req.Pool} is not an IPv{version} CIDR")
        if req.SubPool and not _network(req.SubPool, "ip-range").subnet_of(cidr):
            raise errors.InvalidInput(f"ip-range {req.SubPool} is not inside {req.Pool}")
        cidr_text = str(cidr)
    else:
        cidr_text = _pick_free_cidr(ctx, version, subnetpool)
    pool_id = subnetpool.id if subnetpool else _covering_pool(ctx, version, cidr_text)
    with ctx.lock:
        ctx.pending_pools[cidr_text] = PendingPool(
            cidr=cidr_text, sub_pool=req.SubPool, subnetpool_id=pool_id)
    return models.RequestPoolResponse(PoolID=marks.pool_id(cidr_text, req.SubPool),
                                      Pool=cidr_text)


def _adopt_subnet_pool(ctx: Context, subnet_ref: str, version: int) -> models.RequestPoolResponse:
    subnet = ctx.neutron.find_subnet(subnet_ref)
    if subnet.ip_version != version:
        raise errors.InvalidInput(f"Neutron subnet {subnet_ref!r} is not IPv{version}")
    with ctx.lock:
        ctx.pending_pools[subnet.cidr] = PendingPool(
            cidr=subnet.cidr, existing_subnet_id=subnet.id)
    return models.RequestPoolResponse(PoolID=marks.pool_id(subnet.cidr), Pool=subnet.cidr)


def _covering_pool(ctx: Context, version: int, cidr: str) -> str | None:
    """Kuryr's default subnetpool when it covers ``cidr``: allocating from it makes
    Neutron itself refuse overlapping subnets, atomically and for free."""
    net = ipaddress.ip_network(cidr)
    for prefix in ctx.subnetpool_prefixes.get(version, []):
        if net.subnet_of(ipaddress.ip_network(prefix)):
            return ctx.subnetpool_ids[version]
    return None


def _pick_free_cidr(ctx: Context, version: int, subnetpool: object | None) -> str:
    """A CIDR of the default size not used by any subnet of the pool (1 GET)."""
    if subnetpool is not None:
        pool_id = subnetpool.id
        prefixes = list(subnetpool.prefixes)
        prefixlen = int(subnetpool.default_prefix_length or DEFAULT_PREFIXLEN[version])
    else:
        pool_id = ctx.subnetpool_ids.get(version)
        conf = ctx.conf.neutron
        prefixes = [conf.default_subnetpool_v4_prefix if version == 4
                    else conf.default_subnetpool_v6_prefix]
        prefixlen = DEFAULT_PREFIXLEN[version]
    used = [ipaddress.ip_network(s.cidr)
            for s in ctx.neutron.subnets(subnet_pool_id=pool_id, ip_version=version)]
    with ctx.lock:
        used += [ipaddress.ip_network(c) for c in ctx.reserved_cidrs]
        for prefix in prefixes:
            for candidate in ipaddress.ip_network(prefix).subnets(new_prefix=prefixlen):
                if not any(candidate.overlaps(u) for u in used):
                    ctx.reserved_cidrs.add(str(candidate))
                    return str(candidate)
    raise errors.Conflict(f"no free /{prefixlen} left in {', '.join(prefixes)}")


def release_pool(ctx: Context, req: models.ReleasePoolRequest) -> None:
    """Nothing to do in Neutron: the subnet goes with the network (DeleteNetwork)."""
    try:
        cidr, _ = marks.parse_pool_id(req.PoolID)
    except ValueError:
        return
    with ctx.lock:
        ctx.pending_pools.pop(cidr, None)
        ctx.reserved_cidrs.discard(cidr)


# -- addresses --------------------------------------------------------------------------
def _parse_pool(pool_id: str) -> tuple[str, str]:
    try:
        return marks.parse_pool_id(pool_id)
    except ValueError as exc:
        raise errors.InvalidInput(str(exc)) from exc


def _check_address(address: str, cidr: str) -> str:
    try:
        ip = ipaddress.ip_address(address.split("/")[0])
    except ValueError as exc:
        raise errors.InvalidInput(f"{address!r} is not an IP address") from exc
    if ip not in ipaddress.ip_network(cidr):
        raise errors.InvalidInput(f"address {ip} is outside subnet {cidr}")
    return str(ip)


def request_address(ctx: Context,
                    req: models.RequestAddressRequest) -> models.RequestAddressResponse:
    cidr, _ = _parse_pool(req.PoolID)
    options = req.Options or {}
    prefixlen = ipaddress.ip_network(cidr).prefixlen
    wanted = _check_address(req.Address, cidr) if req.Address else None
    if options.get("RequestAddressType") == models.GATEWAY_REQUEST:
        return models.RequestAddressResponse(
            Address=f"{wanted or _gateway_for(ctx, cidr)}/{prefixlen}")
    subnet = networks.subnet_for_cidr(ctx, cidr)
    if subnet is None:
        raise errors.NotFound(
            f"no Neutron subnet for pool {cidr} yet: Kuryr IPAM needs the Kuryr network driver "
            "(docker network create -d kuryr --ipam-driver kuryr)")
    ip = _address_on_port(ctx, subnet, wanted, options)
    ctx.released.discard(Context.release_key(cidr, ip))
    return models.RequestAddressResponse(Address=f"{ip}/{prefixlen}")


def _gateway_for(ctx: Context, cidr: str) -> str:
    with ctx.lock:
        pending = ctx.pending_pools.get(cidr)
    if pending and pending.existing_subnet_id:
        subnet = ctx.neutron.get_subnet(pending.existing_subnet_id)
        if subnet.gateway_ip:
            return subnet.gateway_ip
    return str(next(ipaddress.ip_network(cidr).hosts()))


def _address_on_port(ctx: Context, subnet: SubnetInfo, wanted: str | None,
                     options: dict[str, str]) -> str:
    """The container's address: from a ready pooled port, a new port, an adopted
    pre-created port, or (the IPv6 call of a dual-stack pair) the port the IPv4
    call just handed out."""
    net = networks.network_for_neutron_id(ctx, subnet.network_id)
    paired = net is not None and net.ipv6 and {s.version for s in net.subnets} == {4, 6}
    if paired and subnet.version == 6:
        with ctx.lock:
            port = ctx.awaiting_v6.pop(subnet.network_id, None)
        if port is not None:
            ctx.pair_lock(subnet.network_id).release()
            return _address_for_family(ctx, port, subnet, wanted)
    if paired and subnet.version == 4:
        # Held until this endpoint's IPv6 call; a caller that never makes one
        # (a non-Docker client) only delays the next pair by PAIR_TIMEOUT.
        ctx.pair_lock(subnet.network_id).acquire(timeout=PAIR_TIMEOUT)
    try:
        port = _port_for_request(ctx, subnet, net, wanted, options)
    except BaseException:
        if paired and subnet.version == 4:
            ctx.pair_lock(subnet.network_id).release()
        raise
    if paired and subnet.version == 4:
        with ctx.lock:
            ctx.awaiting_v6[subnet.network_id] = port
    return _address_for_family(ctx, port, subnet, wanted)


def _port_for_request(ctx: Context, subnet: SubnetInfo, net: object | None,
                      wanted: str | None, options: dict[str, str]) -> PortInfo:
    mac = options.get(models.MAC_OPTION, "")
    if wanted is None and not mac and ctx.pool is not None and net is not None:
        pooled = ctx.pool.take(net, wait=ctx.conf.pool.wait_for_refill)
        if pooled is not None:
            ctx.remember_port(pooled)
            return pooled
    return _create_port(ctx, subnet, mac, wanted, options.get(models.ENDPOINT_NAME_OPTION))


def _address_for_family(ctx: Context, port: PortInfo, subnet: SubnetInfo,
                        wanted: str | None) -> str:
    for ip, subnet_id in port.addresses.items():
        if subnet_id == subnet.id and (wanted is None or wanted == ip):
            return ip
    return _add_address(ctx, port, subnet, wanted)


def _address_in(port: PortInfo, subnet_id: str) -> str:
    return next(ip for ip, sid in port.addresses.items() if sid == subnet_id)


def port_info(port: object, adopted: bool = False) -> PortInfo:
    """What Kuryr keeps of a Neutron port."""
    return PortInfo(
        id=port.id, network_id=port.network_id, mac=port.mac_address,
        addresses={f["ip_address"]: f["subnet_id"] for f in port.fixed_ips},
        vif_type=port.binding_vif_type or "ovs",
        bridge=(port.binding_vif_details or {}).get("bridge_name"),
        adopted=adopted,
        security_groups=list(port.security_group_ids or []),
        expose_group=spec.decode(port.description)[0],
    )


def _create_port(ctx: Context, subnet: SubnetInfo, mac: str, wanted: str | None,
                 endpoint_name: str | None) -> PortInfo:
    fixed_ips = [{"subnet_id": subnet.id, **({"ip_address": wanted} if wanted else {})}]
    if wanted is None:
        # Dual-stack: take the other family's address in the same request, so
        # Docker's second RequestAddress costs nothing.
        net = networks.network_for_neutron_id(ctx, subnet.network_id)
        fixed_ips += [{"subnet_id": s.id} for s in (net.subnets if net else [])
                      if s.version != subnet.version]
    attrs = {
        "network_id": subnet.network_id,
        "fixed_ips": fixed_ips,
        "device_owner": marks.UNBOUND_DEVICE_OWNER,
        "binding_host_id": ctx.host,
        "name": marks.PORT_NAME_PREFIX + (endpoint_name or "docker"),
    }
    if mac:
        attrs["mac_address"] = mac
    if endpoint_name and ctx.dns_enabled:
        attrs["dns_name"] = endpoint_name
    try:
        port = ctx.neutron.create_port(**attrs)
    except errors.Conflict as exc:
        if wanted is None:
            raise
        port = _adopt_existing_port(ctx, subnet, wanted, mac, exc)
        info = port_info(port, adopted=True)
    else:
        info = port_info(port)
    ctx.remember_port(info)
    return info


def _adopt_existing_port(ctx: Context, subnet: SubnetInfo, address: str, mac: str,
                         conflict: errors.Conflict) -> object:
    """``--ip`` naming the address of a pre-created, unused Neutron port: use that port."""
    holders = ctx.neutron.ports(network_id=subnet.network_id,
                                fixed_ips=[f"ip_address={address}"])
    holder = holders[0] if holders else None
    if holder is None or holder.device_owner or holder.device_id:
        raise errors.Conflict(f"address {address} is already in use") from conflict
    attrs = {"binding_host_id": ctx.host, "device_owner": marks.UNBOUND_DEVICE_OWNER}
    if mac and mac != holder.mac_address:
        attrs["mac_address"] = mac
    port = ctx.neutron.update_port(holder.id, **attrs)
    ctx.neutron.set_tags(port, sorted({*port.tags, marks.PORT_EXISTING_TAG}))
    LOG.info("adopted pre-created port %s for address %s", port.id, address)
    return port


def _add_address(ctx: Context, port: PortInfo, subnet: SubnetInfo, wanted: str | None) -> str:
    keep = [{"subnet_id": sid, "ip_address": ip} for ip, sid in port.addresses.items()
            if sid != subnet.id]
    new = {"subnet_id": subnet.id, **({"ip_address": wanted} if wanted else {})}
    updated = ctx.neutron.update_port(port.id, fixed_ips=[*keep, new])
    ctx.forget_addresses(port)
    with ctx.lock:
        port.addresses = {f["ip_address"]: f["subnet_id"] for f in updated.fixed_ips}
    ctx.remember_port(port)
    return _address_in(port, subnet.id)


def release_address(ctx: Context, req: models.ReleaseAddressRequest) -> None:
    cidr, _ = _parse_pool(req.PoolID)
    address = _check_address(req.Address, cidr)
    key = Context.release_key(cidr, address)
    if key in ctx.released:
        return
    with ctx.lock:
        port = ctx.ports_by_address.get(address)
    if port is None:
        subnet = networks.subnet_for_cidr(ctx, cidr)
        if subnet is None or subnet.gateway == address:
            ctx.released.add(key)
            return
        # Unknown to this process (e.g. Kuryr restarted since RequestAddress).
        found = ctx.neutron.ports(network_id=subnet.network_id,
                                  fixed_ips=[f"ip_address={address}"])
        owned = [p for p in found if p.device_owner in (marks.UNBOUND_DEVICE_OWNER,
                                                        marks.DEVICE_OWNER,
                                                        marks.POOL_DEVICE_OWNER)]
        if not owned:
            ctx.released.add(key)
            return
        port = port_info(owned[0], adopted=marks.PORT_EXISTING_TAG in owned[0].tags)
    forget_port(ctx, port, release=True)


def forget_port(ctx: Context, port: PortInfo, release: bool) -> None:
    """Delete Kuryr's port (or just unbind an adopted one) and mark its addresses free.

    The container is already unplugged: the Neutron writes run in the background."""
    group = port.expose_group
    port.expose_group = None
    if ctx.background is not None:
        ctx.background.cancel(port.id)
    if port.adopted:
        groups = [g for g in port.security_groups if g != group]
        ctx.later(port.id, f"unbind adopted port {port.id}", lambda: ctx.neutron.update_port(
            port.id, binding_host_id="", device_owner="", device_id="",
            security_group_ids=groups, description=""))
    elif release:
        ctx.later(port.id, f"delete port {port.id}", lambda: ctx.neutron.delete_port(port.id))
    if group:
        ctx.later(port.id, f"delete security group {group}",
                  lambda: ctx.neutron.delete_security_group(group))
    ctx.forget_addresses(port)
    with ctx.lock:
        for ip, subnet_id in port.addresses.items():
            subnet = next((s for s in ctx.subnets_by_cidr.values() if s.id == subnet_id), None)
            if subnet is not None:
                ctx.released.add(Context.release_key(subnet.cidr, ip))

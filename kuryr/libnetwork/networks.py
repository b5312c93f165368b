"""Docker networks as Neutron networks.

Neutron requests: CreateNetwork 3 (POST network, PUT tags, POST subnet; one
more POST per extra subnet); DeleteNetwork 1 DELETE when the network is known
to this process, 2 after a restart.
"""

from __future__ import annotations

import ipaddress
import logging

from kuryr import errors
from kuryr.libnetwork import floating, models
from kuryr.libnetwork.context import Context, NetworkInfo, PendingPool, SubnetInfo
from kuryr.neutron import marks

LOG = logging.getLogger(__name__)

NET_ID_OPTIONS = ("neutron.net.uuid", "neutron.net.name")
POOL_SIZE_OPTION = "kuryr.pool.size"  # -o kuryr.pool.size=N: ports kept ready


def _subnet_info(subnet: object) -> SubnetInfo:
    return SubnetInfo(
        id=subnet.id, network_id=subnet.network_id, cidr=subnet.cidr,
        gateway=subnet.gateway_ip or None,
        host_routes=tuple((r["destination"], r["nexthop"]) for r in subnet.host_routes or ()),
    )


def _remember(ctx: Context, info: NetworkInfo) -> NetworkInfo:
    with ctx.lock:
        ctx.networks[info.docker_id] = info
        for subnet in info.subnets:
            ctx.subnets_by_cidr[subnet.cidr] = subnet
    return info


# -- lookups used by the other handlers --------------------------------------------
def network_for_docker_id(ctx: Context, docker_id: str) -> NetworkInfo:
    """The network Kuryr made or adopted for ``docker_id`` (cached; else 2 GETs)."""
    with ctx.lock:
        known = ctx.networks.get(docker_id)
    if known is not None:
        return known
    if not marks.DOCKER_ID.match(docker_id):
        raise errors.InvalidInput(f"{docker_id!r} is not a Docker network id")
    found = ctx.neutron.networks_tagged(marks.network_tags(docker_id))
    if not found:
        raise errors.NotFound(f"no Neutron network is marked with Docker network {docker_id}")
    return _load(ctx, docker_id, found[0])


def _load(ctx: Context, docker_id: str, net: object) -> NetworkInfo:
    subnets = [_subnet_info(s) for s in ctx.neutron.subnets(network_id=net.id)]
    adopted = any(t.startswith(marks.NET_EXISTING_TAG) for t in net.tags)
    return _remember(ctx, NetworkInfo(docker_id=docker_id, neutron_id=net.id, mtu=net.mtu,
                                      subnets=subnets, adopted=adopted, tags=list(net.tags)))


def network_for_neutron_id(ctx: Context, neutron_id: str) -> NetworkInfo | None:
    with ctx.lock:
        return next((n for n in ctx.networks.values() if n.neutron_id == neutron_id), None)


def subnet_for_cidr(ctx: Context, cidr: str) -> SubnetInfo | None:
    """The Kuryr subnet with this CIDR (cached; else 2 GETs after a restart)."""
    with ctx.lock:
        known = ctx.subnets_by_cidr.get(cidr)
    if known is not None:
        return known
    for subnet in ctx.neutron.subnets(cidr=cidr):
        net = ctx.neutron.get_network(subnet.network_id)
        docker_id = marks.docker_network_id_from_tags(net.tags)
        if docker_id:
            _load(ctx, docker_id, net)
            return ctx.subnets_by_cidr.get(cidr)
    return None


# -- CreateNetwork -----------------------------------------------------------------
def create_network(ctx: Context, req: models.CreateNetworkRequest) -> None:
    docker_id = req.NetworkID
    if not marks.DOCKER_ID.match(docker_id):
        raise errors.InvalidInput(f"{docker_id!r} is not a Docker network id")
    with ctx.lock:
        if docker_id in ctx.networks:
            return  # replayed request
    options = (req.Options or {}).get(models.GENERIC_OPTIONS) or {}
    if not isinstance(options, dict):
        raise errors.InvalidInput(f"{models.GENERIC_OPTIONS} must be a map of options")
    pools = [*(req.IPv4Data or []), *(req.IPv6Data or [])]
    extra_tags = _feature_tags(req, options)
    existing_ref = next((str(options[k]) for k in NET_ID_OPTIONS if options.get(k)), None)
    if existing_ref:
        _adopt_network(ctx, docker_id, existing_ref, pools, extra_tags)
    else:
        shared = str(options.get("neutron.net.shared", "")).lower() in ("true", "1", "yes")
        _create_network(ctx, docker_id, pools, shared, extra_tags)
    if ctx.pool is not None:
        ctx.pool.refill_soon(network_for_docker_id(ctx, docker_id))


def _feature_tags(req: models.CreateNetworkRequest, options: dict) -> list[str]:
    """Tags recording what Kuryr must know after a restart (set in the same request)."""
    tags = []
    if _truthy((req.Options or {}).get(models.ENABLE_IPV6_OPTION)):
        tags.append(marks.NET_IPV6_TAG)
    size = options.get(POOL_SIZE_OPTION)
    if size is not None:
        try:
            tags.append(f"{marks.NET_POOL_TAG}{max(0, int(size))}")
        except (TypeError, ValueError) as exc:
            raise errors.InvalidInput(f"{POOL_SIZE_OPTION} must be a number, not {size!r}") \
                from exc
    return tags


def _truthy(value: object) -> bool:
    return str(value).lower() in ("true", "1", "yes")


def _create_network(ctx: Context, docker_id: str, pools: list[models.IPAMData],
                    shared: bool, extra_tags: list[str]) -> None:
    already = ctx.neutron.networks_tagged(marks.network_tags(docker_id)) if not pools else []
    if already:  # replay after a restart, without pools to tell us more
        _load(ctx, docker_id, already[0])
        return
    attrs = {"name": marks.network_name(docker_id), "is_admin_state_up": True}
    if shared:
        attrs["is_shared"] = True
    net = ctx.neutron.create_network(**attrs)
    try:
        # The host tag lets this host's garbage collector find networks Docker
        # forgot (a DeleteNetwork that failed, a crash mid-CreateNetwork).
        tags = [*marks.network_tags(docker_id), marks.host_tag(ctx.host), *extra_tags]
        ctx.neutron.set_tags(net, tags)
        subnets = [_create_subnet(ctx, net.id, pool) for pool in pools]
    except Exception:
        LOG.warning("network %s: rolling back Neutron network %s", docker_id[:12], net.id)
        ctx.neutron.delete_network(net.id)
        raise
    _remember(ctx, NetworkInfo(docker_id=docker_id, neutron_id=net.id, mtu=net.mtu,
                               subnets=subnets, tags=tags))
    _forget_pending(ctx, pools)


def _pending(ctx: Context, cidr: str) -> PendingPool:
    with ctx.lock:
        return ctx.pending_pools.get(cidr) or PendingPool(cidr=cidr)


def _forget_pending(ctx: Context, pools: list[models.IPAMData]) -> None:
    with ctx.lock:
        for pool in pools:
            ctx.pending_pools.pop(pool.Pool, None)
            ctx.reserved_cidrs.discard(pool.Pool)


def _create_subnet(ctx: Context, network_id: str, pool: models.IPAMData) -> SubnetInfo:
    pending = _pending(ctx, pool.Pool)
    if pending.existing_subnet_id:
        raise errors.InvalidInput(
            f"subnet {pool.Pool} exists in Neutron: adopt it together with its network "
            "(-o neutron.net.uuid=...)")
    cidr = ipaddress.ip_network(pool.Pool)
    gateway = pool.Gateway.split("/")[0] if pool.Gateway else None
    attrs = {
        "network_id": network_id, "cidr": str(cidr), "ip_version": cidr.version,
        "name": marks.subnet_name(str(cidr)), "gateway_ip": gateway,
        "is_dhcp_enabled": ctx.conf.neutron.enable_dhcp,
    }
    if pending.subnetpool_id:
        attrs["subnet_pool_id"] = pending.subnetpool_id
    if pending.sub_pool:
        attrs["allocation_pools"] = [_range(pending.sub_pool, gateway)]
    return _subnet_info(ctx.neutron.create_subnet(**attrs))


def _range(sub_pool: str, gateway: str | None) -> dict[str, str]:
    """Docker's --ip-range as a Neutron allocation pool."""
    hosts = list(ipaddress.ip_network(sub_pool).hosts()) or [ipaddress.ip_network(sub_pool)[0]]
    if gateway and ipaddress.ip_address(gateway) == hosts[0] and len(hosts) > 1:
        hosts = hosts[1:]
    return {"start": str(hosts[0]), "end": str(hosts[-1])}


def _adopt_network(ctx: Context, docker_id: str, ref: str,
                   pools: list[models.IPAMData], extra_tags: list[str]) -> None:
    net = ctx.neutron.find_network(ref)
    owner = marks.docker_network_id_from_tags(net.tags)
    if owner and owner != docker_id:
        raise errors.Conflict(
            f"Neutron network {ref!r} is already used by Docker network {owner[:12]}")
    existing = {s.cidr: s for s in ctx.neutron.subnets(network_id=net.id)}
    created: list[SubnetInfo] = []
    tags = sorted({*net.tags, *marks.network_tags(docker_id),
                   marks.existing_network_tag(docker_id), *extra_tags})
    ctx.neutron.set_tags(net, tags)
    try:
        subnets = []
        for pool in pools:
            if pool.Pool in existing:
                subnets.append(_subnet_info(existing[pool.Pool]))
            else:
                created.append(_create_subnet(ctx, net.id, pool))
                subnets.append(created[-1])
        if not pools:
            subnets = [_subnet_info(s) for s in existing.values()]
    except Exception:
        for subnet in created:
            ctx.neutron.delete_subnet(subnet.id)
        ctx.neutron.set_tags(net, list(net.tags))
        raise
    _remember(ctx, NetworkInfo(docker_id=docker_id, neutron_id=net.id, mtu=net.mtu,
                               subnets=subnets, adopted=True, tags=tags))
    _forget_pending(ctx, pools)
    LOG.info("network %s: adopted Neutron network %s", docker_id[:12], net.id)


# -- DeleteNetwork -----------------------------------------------------------------
def delete_network(ctx: Context, req: models.NetworkRequest) -> None:
    try:
        info = network_for_docker_id(ctx, req.NetworkID)
    except errors.NotFound:
        return  # already gone: Docker retries and replays
    if ctx.pool is not None:
        ctx.pool.drain(info)
    if ctx.background is not None:
        # Ports being deleted would keep the network in use.  Bounded well below
        # plugin_call_timeout: if the queue is long, the Conflict path below
        # deletes the unused Kuryr ports itself.
        ctx.background.wait_idle(timeout=20)
    if info.adopted:
        ours = {*marks.network_tags(info.docker_id), marks.existing_network_tag(info.docker_id),
                *(t for t in info.tags if t == marks.NET_IPV6_TAG
                  or t.startswith(marks.NET_POOL_TAG))}
        floating.detach_subnets(ctx, [s.id for s in info.subnets])
        net = ctx.neutron.get_network(info.neutron_id)
        for subnet in info.subnets:
            # Subnets Kuryr added to an adopted network carry Kuryr's name.
            if _named_by_kuryr(ctx, subnet):
                ctx.neutron.delete_subnet(subnet.id)
        ctx.neutron.set_tags(net, [t for t in net.tags if t not in ours])
    else:
        subnet_ids = [s.id for s in info.subnets]
        floating.detach_subnets(ctx, subnet_ids)
        try:
            ctx.neutron.delete_network(info.neutron_id)
        except errors.Conflict:
            # Docker forgets the network even when this fails, so clear what
            # only Kuryr could have left (router interface, unused Kuryr ports)
            # and try once more.
            floating.detach_subnets(ctx, subnet_ids, known_only=False)
            _delete_unused_kuryr_ports(ctx, info.neutron_id)
            ctx.neutron.delete_network(info.neutron_id)
    with ctx.lock:
        ctx.networks.pop(info.docker_id, None)
        for subnet in info.subnets:
            ctx.subnets_by_cidr.pop(subnet.cidr, None)


def _delete_unused_kuryr_ports(ctx: Context, network_id: str) -> None:
    from kuryr.binding import netlink
    from kuryr.binding.vif import VIF

    owners = (marks.POOL_DEVICE_OWNER, marks.UNBOUND_DEVICE_OWNER, marks.DEVICE_OWNER)
    for port in ctx.neutron.ports(network_id=network_id):
        vif = VIF(port_id=port.id, mac=port.mac_address)
        in_use = netlink.link_exists(vif.host_ifname) and not netlink.link_exists(
            vif.container_ifname)
        if port.device_owner in owners and not in_use:
            if netlink.link_exists(vif.host_ifname):
                ctx.ovs.unplug(vif.host_ifname)
                netlink.delete_link(vif.host_ifname)
            ctx.neutron.delete_port(port.id)


def _named_by_kuryr(ctx: Context, subnet: SubnetInfo) -> bool:
    return ctx.neutron.get_subnet(subnet.id).name == marks.subnet_name(subnet.cidr)

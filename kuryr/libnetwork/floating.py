"""Neutron-native publishing: a floating IP with port forwardings.

With ``[publish] floating_ip_network`` set, every published port also becomes
a port forwarding FIP:HostPort -> container:Port on one floating IP per host,
reachable from the external network.  The container's subnet is attached to
Kuryr's router (gateway on that network) the first time it publishes.
Everything lives in Neutron, so a restart has nothing to rebuild.

Neutron requests: 1 POST per published port at start, 1 GET + 1 DELETE per
port at stop; once per process: the router and floating IP (found or made);
once per subnet: the router interface.
"""

from __future__ import annotations

import logging

from kuryr import errors
from kuryr.libnetwork.context import Context, PortInfo
from kuryr.publish.spec import Published

LOG = logging.getLogger(__name__)


def enabled(ctx: Context) -> bool:
    return bool(ctx.conf.publish.floating_ip_network)


def _setup(ctx: Context) -> tuple[str, str]:
    """(router id, floating IP id), found or created once."""
    with ctx.lock:
        if ctx.publish_fip is not None:
            return ctx.publish_router, ctx.publish_fip
        external = ctx.neutron.find_network(ctx.conf.publish.floating_ip_network)
        router = ctx.neutron.find_router(ctx.conf.publish.router_name)
        if router is None:
            router = ctx.neutron.create_router(ctx.conf.publish.router_name, external.id)
        description = f"kuryr-publish:{ctx.host}"
        fips = ctx.neutron.floating_ips(description=description,
                                        floating_network_id=external.id)
        fip = fips[0] if fips else ctx.neutron.create_floating_ip(external.id, description)
        ctx.publish_router, ctx.publish_fip = router.id, fip.id
        ctx.publish_address = fip.floating_ip_address
        LOG.info("publishing through floating IP %s (router %s)", fip.floating_ip_address,
                 router.id)
        return router.id, fip.id


def _attach_subnets(ctx: Context, router_id: str, port: PortInfo) -> None:
    for subnet_id in set(port.addresses.values()):
        with ctx.lock:
            if subnet_id in ctx.router_subnets:
                continue
        try:
            ctx.neutron.add_router_interface(router_id, subnet_id)
        except (errors.InvalidInput, errors.Conflict) as exc:
            if "already has" not in str(exc) and "overlaps" not in str(exc):
                raise
        with ctx.lock:
            ctx.router_subnets.add(subnet_id)


def forward(ctx: Context, port: PortInfo, published: list[Published]) -> None:
    router_id, fip_id = _setup(ctx)
    _attach_subnets(ctx, router_id, port)
    ipv4 = [ip for ip in port.addresses if ":" not in ip]
    if not ipv4:
        raise errors.InvalidInput("floating IP publishing needs an IPv4 address")
    done: list[Published] = []
    try:
        for item in published:
            ctx.neutron.create_port_forwarding(
                fip_id, protocol=item.proto, internal_ip_address=ipv4[0],
                internal_port=item.container_port, internal_port_id=port.id,
                external_port=item.host_port)
            done.append(item)
    except Exception:
        unforward(ctx, port.id)
        raise


def unforward(ctx: Context, port_id: str) -> None:
    if not enabled(ctx):
        return
    _, fip_id = _setup(ctx)
    for forwarding in ctx.neutron.port_forwardings(fip_id, internal_port_id=port_id):
        ctx.neutron.delete_port_forwarding(fip_id, forwarding.id)


def detach_subnets(ctx: Context, subnet_ids: list[str], known_only: bool = True) -> None:
    """Before a network is deleted: take its subnets off Kuryr's router.

    ``known_only``: just the subnets this process attached (no request for the
    others); a restarted Kuryr finds out from Neutron refusing the delete."""
    if not enabled(ctx):
        return
    with ctx.lock:
        if known_only:
            subnet_ids = [s for s in subnet_ids if s in ctx.router_subnets]
    if not subnet_ids:
        return
    router_id, _ = _setup(ctx)
    for subnet_id in subnet_ids:
        ctx.neutron.remove_router_interface(router_id, subnet_id)
        with ctx.lock:
            ctx.router_subnets.discard(subnet_id)

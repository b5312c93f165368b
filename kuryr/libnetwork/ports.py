"""Exposed and published ports of a container.

Exposed ports (--expose, EXPOSE, the container side of -p) become a security
group of the endpoint's own, allowing ingress to exactly those ports; it is
made at CreateEndpoint and set in the same port update as device_id, and
deleted with the port.  Published ports (-p, -P) are served by the forwarder
(see kuryr/publish/forwarder.py) from ProgramExternalConnectivity to
RevokeExternalConnectivity.  What was set up is recorded in the Neutron
port's description, so a restarted Kuryr can serve and undo it.

Neutron requests: none for a container without exposed or published ports;
otherwise 2 more at start (POST group, POST rules) and 1 more at stop
(DELETE group); 1 more at start when Docker left the host port to Kuryr (-P).
"""

from __future__ import annotations

import ipaddress
import logging
import os
from pathlib import Path

from kuryr import errors
from kuryr.libnetwork import floating
from kuryr.libnetwork.context import Context, PortInfo
from kuryr.neutron import marks
from kuryr.neutron.client import Neutron
from kuryr.publish import spec
from kuryr.publish.forwarder import Target
from kuryr.publish.netns import netns_has_mac

LOG = logging.getLogger(__name__)


def _rules(group_id: str, exposed: list[spec.Exposed], versions: set[int]) -> list[dict]:
    return [{"security_group_id": group_id, "direction": "ingress",
             "ethertype": f"IPv{version}", "protocol": e.proto,
             "port_range_min": e.port, "port_range_max": e.port}
            for e in exposed for version in sorted(versions)]


def _versions(port: PortInfo) -> set[int]:
    return {ipaddress.ip_address(ip).version for ip in port.addresses} or {4}


def endpoint_port_attrs(ctx: Context, port: PortInfo, endpoint_id: str,
                        options: dict | None) -> dict:
    """Extra attributes for the CreateEndpoint port update; makes the expose group."""
    if not ctx.conf.process_external_connectivity:
        return {}
    exposed = spec.exposed_ports(options)
    published = spec.published_ports(options)
    if not exposed and not published:
        return {}
    group_id = None
    if exposed:
        group = ctx.neutron.create_security_group(
            marks.EXPOSE_GROUP_PREFIX + endpoint_id[:12],
            description=marks.host_mark(ctx.host) + " exposed "
            + ", ".join(f"{e.port}/{e.proto}" for e in exposed))
        group_id = group.id
        try:
            ctx.neutron.create_security_group_rules(_rules(group.id, exposed, _versions(port)))
            description = spec.encode(published, group_id)
        except Exception:
            ctx.neutron.delete_security_group(group.id)
            raise
        port.expose_group = group_id
    else:
        description = spec.encode(published, None)
    groups = [*port.security_groups, *([group_id] if group_id else [])]
    return {"security_group_ids": groups, "description": description}


def _target(port: PortInfo) -> Target:
    if not port.netns:
        raise errors.NotFound(f"port {port.id} has not joined a container yet")
    addresses = sorted(port.addresses, key=lambda ip: ipaddress.ip_address(ip).version)
    return Target(netns=port.netns, address=addresses[0])


def program(ctx: Context, port: PortInfo, endpoint_id: str, options: dict | None) -> None:
    published = spec.published_ports(options)
    if not published or not ctx.conf.process_external_connectivity or ctx.forwarder is None:
        return
    bound = ctx.forwarder.publish(endpoint_id, _target(port), published)
    if floating.enabled(ctx):
        try:
            floating.forward(ctx, port, bound)
        except Exception:
            ctx.forwarder.unpublish(endpoint_id)
            raise
    if [(p.proto, p.container_port, p.host_ip, p.host_port) for p in bound] != \
            [(p.proto, p.container_port, p.host_ip, p.host_port) for p in published]:
        # Kuryr picked the host ports (-P or a range): record the real ones.
        try:
            ctx.neutron.update_port(port.id, description=spec.encode(bound, port.expose_group))
        except Exception:
            ctx.forwarder.unpublish(endpoint_id)
            raise


def revoke(ctx: Context, port: PortInfo | None, endpoint_id: str) -> None:
    if ctx.forwarder is not None and ctx.forwarder.unpublish(endpoint_id) and port:
        floating.unforward(ctx, port.id)


def restore(ctx: Context) -> int:
    """Serve again the published ports of this host's running containers (1 GET)."""
    if ctx.forwarder is None:
        return 0
    restored = 0
    for port in published_ports_on_host(ctx.neutron, ctx.host):
        _, published = spec.decode(port.description)
        netns = _find_netns(Path(ctx.conf.docker_netns_dir), port.mac_address)
        if netns is None or not port.device_id:
            continue
        addresses = sorted((f["ip_address"] for f in port.fixed_ips),
                           key=lambda ip: ipaddress.ip_address(ip).version)
        try:
            ctx.forwarder.publish(port.device_id, Target(netns, addresses[0]), published)
            restored += 1
        except errors.KuryrError as exc:
            LOG.warning("port %s: cannot publish again: %s", port.id, exc)
    return restored


def _find_netns(directory: Path, mac: str) -> str | None:
    try:
        candidates = sorted(directory.iterdir(), key=os.path.getmtime, reverse=True)
    except OSError:
        return None
    return next((str(c) for c in candidates if netns_has_mac(str(c), mac)), None)


def published_ports_on_host(neutron: Neutron, host: str) -> list:
    from kuryr.neutron import marks

    return [p for p in neutron.ports(device_owner=marks.DEVICE_OWNER, binding_host_id=host)
            if (p.description or "").startswith(spec.DESCRIPTION_PREFIX)]


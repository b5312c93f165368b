"""Exposed and published ports of a container.

Exposed ports (--expose, EXPOSE, the container side of -p) become a security
group of the endpoint's own, allowing ingress to exactly those ports; it is
made at CreateEndpoint and set in the same port update as device_id, and
deleted with the port (by the core's port lifecycle).  Published ports (-p,
-P) are served by the forwarder (see kuryr/publish/forwarder.py) from
ProgramExternalConnectivity to RevokeExternalConnectivity.  What was set up is
recorded in the Neutron port's description, so a restarted Kuryr can serve
and undo it.

Neutron requests: none for a container without exposed or published ports;
otherwise 2 more at start (POST group, POST rules) and 1 more at stop
(DELETE group); 1 more at start when Docker left the host port to Kuryr (-P).
"""

from __future__ import annotations

import ipaddress
import logging
import os
from pathlib import Path
from typing import Any

from kuryr import errors
from kuryr.core.model import Lease
from kuryr.core.ports import PortExtras
from kuryr.libnetwork.floating import FloatingPublisher
from kuryr.neutron import marks
from kuryr.neutron.client import Neutron
from kuryr.neutron.types import Port
from kuryr.publish import spec
from kuryr.publish.forwarder import Forwarder, Target
from kuryr.publish.netns import is_netns, netns_has_mac

LOG = logging.getLogger(__name__)


def _rules(group_id: str, exposed: list[spec.Exposed],
           versions: set[int]) -> list[dict[str, object]]:
    return [{"security_group_id": group_id, "direction": "ingress",
             "ethertype": f"IPv{version}", "protocol": e.proto,
             "port_range_min": e.port, "port_range_max": e.port}
            for e in exposed for version in sorted(versions)]


def _first_address(addresses: list[str]) -> str:
    return min(addresses, key=lambda ip: ipaddress.ip_address(ip).version)


class Publishing:
    def __init__(self, neutron: Neutron, forwarder: Forwarder | None,
                 floating: FloatingPublisher, host: str, enabled: bool,
                 netns_dir: str) -> None:
        self.neutron = neutron
        self.forwarder = forwarder
        self.floating = floating
        self.host = host
        self.enabled = enabled
        self.netns_dir = Path(netns_dir)

    def extras_for(self, endpoint_id: str, addresses: list[str],
                   options: dict[str, Any] | None, mac: str) -> PortExtras | None:
        """What CreateEndpoint sets on the port; makes the expose group (the caller
        deletes it with ``discard`` if the endpoint cannot be made)."""
        exposed = spec.exposed_ports(options) if self.enabled else []
        published = spec.published_ports(options) if self.enabled else []
        if not exposed and not published:
            return PortExtras(mac_address=mac) if mac else None
        group_id = None
        if exposed:
            group = self.neutron.create_security_group(
                marks.EXPOSE_GROUP_PREFIX + endpoint_id[:12],
                description=marks.host_mark(self.host) + " exposed "
                + ", ".join(f"{e.port}/{e.proto}" for e in exposed))
            group_id = group.id
            versions: set[int] = {ipaddress.ip_address(a).version for a in addresses} or {4}
            try:
                self.neutron.create_security_group_rules(_rules(group_id, exposed, versions))
            except Exception:
                self.neutron.delete_security_group(group_id)
                raise
        return PortExtras(security_group_ids=(group_id,) if group_id else (),
                          description=spec.encode(published, group_id),
                          expose_group=group_id, mac_address=mac)

    def discard(self, extras: PortExtras | None) -> None:
        if extras is not None and extras.expose_group:
            self.neutron.delete_security_group(extras.expose_group)

    def program(self, lease: Lease, endpoint_id: str, options: dict[str, Any] | None) -> None:
        published = spec.published_ports(options)
        if not published or not self.enabled or self.forwarder is None:
            return
        if not lease.netns:
            raise errors.NotFound(f"port {lease.port.id} has not joined a container yet")
        target = Target(netns=lease.netns, address=_first_address(list(lease.port.addresses)))
        bound = self.forwarder.publish(endpoint_id, target, published)
        if self.floating.enabled:
            try:
                self.floating.forward(lease.port, bound)
            except Exception:
                self.forwarder.unpublish(endpoint_id)
                raise
        if [(p.proto, p.container_port, p.host_ip, p.host_port) for p in bound] != \
                [(p.proto, p.container_port, p.host_ip, p.host_port) for p in published]:
            # Kuryr picked the host ports (-P or a range): record the real ones.
            try:
                self.neutron.update_port(lease.port.id,
                                         description=spec.encode(bound, lease.expose_group))
            except Exception:
                self.forwarder.unpublish(endpoint_id)
                raise

    def revoke(self, port_id: str | None, endpoint_id: str) -> None:
        if self.forwarder is not None and self.forwarder.unpublish(endpoint_id) and port_id:
            self.floating.unforward(port_id)

    def restore(self) -> int:
        """Serve again the published ports of this host's running containers (1 GET)."""
        if self.forwarder is None:
            return 0
        restored = 0
        for port in published_ports_on_host(self.neutron, self.host):
            _, published = spec.decode(port.description)
            netns = _find_netns(self.netns_dir, port.mac_address)
            if netns is None or not port.device_id:
                continue
            target = Target(netns, _first_address(list(port.addresses)))
            try:
                self.forwarder.publish(port.device_id, target, published)
                restored += 1
            except errors.KuryrError as exc:
                LOG.warning("port %s: cannot publish again: %s", port.id, exc)
        return restored


def _find_netns(directory: Path, mac: str) -> str | None:
    try:
        candidates = sorted(directory.iterdir(), key=os.path.getmtime, reverse=True)
    except OSError:
        return None
    # Only namespaces are opened: anything else there (a FIFO) could hang pyroute2.
    return next((str(c) for c in candidates
                 if _is_netns_file(c) and netns_has_mac(str(c), mac)), None)


def _is_netns_file(path: Path) -> bool:
    try:
        return is_netns(path.stat())
    except OSError:
        return False


def published_ports_on_host(neutron: Neutron, host: str) -> list[Port]:
    return [p for p in neutron.ports(device_owner=marks.DEVICE_OWNER, binding_host_id=host)
            if (p.description or "").startswith(spec.DESCRIPTION_PREFIX)]

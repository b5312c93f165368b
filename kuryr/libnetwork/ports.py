"""Exposed and published ports of a container.

Exposed ports (--expose, EXPOSE, the container side of -p) become a security
group of the endpoint's own, allowing ingress to exactly those ports; it is
made at CreateEndpoint and set in the same port update as device_id, and
deleted with the port (by the core's port lifecycle).  Published ports (-p,
-P) are served by the forwarder (see kuryr/publish/forwarder.py) from
ProgramExternalConnectivity to RevokeExternalConnectivity.  What was set up is
recorded in the Neutron port's description, so a restarted Kuryr can serve
and undo it; what a restarted Kuryr serves again is recorded where only root
writes, on the port's OVS interface (the description is the tenant's to edit).

Neutron requests: none for a container without exposed or published ports;
otherwise 2 more at start (POST group, POST rules) and 1 more at stop
(DELETE group); 1 more at start when Docker left the host port to Kuryr (-P).
"""

from __future__ import annotations

import ipaddress
import logging
from pathlib import Path
from typing import Any, Protocol

from kuryr import errors
from kuryr.binding import ovs
from kuryr.binding.vif import VIF
from kuryr.core.model import Lease
from kuryr.core.placement import Placement
from kuryr.core.ports import PortExtras
from kuryr.libnetwork.floating import FloatingPublisher
from kuryr.neutron import marks
from kuryr.neutron.client import Neutron
from kuryr.neutron.types import Port
from kuryr.publish import spec
from kuryr.publish.forwarder import Forwarder, Target
from kuryr.publish.netns import is_netns

LOG = logging.getLogger(__name__)


def _rules(group_id: str, exposed: list[spec.Exposed],
           versions: set[int]) -> list[dict[str, object]]:
    return [{"security_group_id": group_id, "direction": "ingress",
             "ethertype": f"IPv{version}", "protocol": e.proto,
             "port_range_min": e.port, "port_range_max": e.port}
            for e in exposed for version in sorted(versions)]


def _first_address(addresses: list[str]) -> str:
    return min(addresses, key=lambda ip: ipaddress.ip_address(ip).version)


class PublishRecords(Protocol):
    """Where the published ports of an endpoint are recorded for a restarted Kuryr
    (kuryr.binding.ovs.OVS: the interface's external_ids)."""

    def record_published(self, ifname: str, values: dict[str, str]) -> bool: ...

    def forget_published(self, ifname: str) -> None: ...

    def published_records(self) -> list[dict[str, str]]: ...


class Publishing:
    def __init__(self, neutron: Neutron, forwarder: Forwarder | None,
                 floating: FloatingPublisher, records: PublishRecords | None, host: str,
                 enabled: bool, default_host_ip: str = "") -> None:
        self.neutron = neutron
        self.forwarder = forwarder
        self.floating = floating
        self.records = records
        self.host = host
        self.enabled = enabled
        self.default_host_ip = default_host_ip

    def extras_for(self, endpoint_id: str, addresses: list[str],
                   options: dict[str, Any] | None, mac: str) -> PortExtras | None:
        """What CreateEndpoint sets on the port; makes the expose group (the caller
        deletes it with ``discard`` if the endpoint cannot be made)."""
        exposed = spec.exposed_ports(options) if self.enabled else []
        published = self._published(options) if self.enabled else []
        if not exposed and not published:
            return PortExtras(mac_address=mac) if mac else None
        group_id = None
        if exposed:
            group = self.neutron.create_security_group(
                marks.EXPOSE_GROUP_PREFIX + endpoint_id[:12],
                description=marks.expose_group_description(self.host))
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

    def _published(self, options: dict[str, Any] | None) -> list[spec.Published]:
        return spec.published_ports(options, self.default_host_ip)

    def discard(self, extras: PortExtras | None) -> None:
        if extras is not None and extras.expose_group:
            self.neutron.delete_security_group(extras.expose_group)

    def program(self, lease: Lease, endpoint_id: str, options: dict[str, Any] | None) -> None:
        published = self._published(options)
        if not published or not self.enabled or self.forwarder is None:
            return
        if not lease.netns:
            raise errors.NotFound(f"port {lease.port.id} has not joined a container yet")
        target = Target(netns=lease.netns, address=_first_address(list(lease.port.addresses)))
        bound = self.forwarder.publish(endpoint_id, target, published)
        try:
            self._record(lease.port, endpoint_id, target, bound)
            # A floating IP reaches the host port from outside: only for ports the
            # user published on every address, never one bound to 127.0.0.1.
            outside = [p for p in bound if p.on_every_address]
            if self.floating.enabled and outside:
                self.floating.forward(lease.port, outside)
            if _rows(bound) != _rows(published):
                # Kuryr picked the host ports (-P or a range): record the real ones.
                self.neutron.update_port(lease.port.id,
                                         description=spec.encode(bound, lease.expose_group))
        except Exception:
            self._unpublish(lease.port, endpoint_id)
            raise

    def _record(self, port: Port, endpoint_id: str, target: Target,
                bound: list[spec.Published]) -> None:
        if self.records is None:
            return
        recorded = self.records.record_published(_ifname(port.id), {
            ovs.ENDPOINT_KEY: endpoint_id, ovs.NETNS_KEY: target.netns,
            ovs.TARGET_KEY: target.address,
            ovs.PUBLISHED_KEY: spec.encode(bound, None)})
        if not recorded:
            LOG.info("port %s is not an OVS interface: its published ports are not "
                     "served again after a restart of Kuryr", port.id)

    def _unpublish(self, port: Port, endpoint_id: str) -> None:
        if self.forwarder is not None:
            self.forwarder.unpublish(endpoint_id)
        if self.records is not None:
            self.records.forget_published(_ifname(port.id))

    def revoke(self, port_id: str | None, endpoint_id: str) -> None:
        """Stop serving the endpoint's published ports (the floating IP's too) and
        forget their record."""
        if self.forwarder is None or not self.forwarder.unpublish(endpoint_id):
            return
        if port_id:
            if self.records is not None:
                self.records.forget_published(_ifname(port_id))
            self.floating.unforward(port_id)

    def restore(self) -> int:
        """Serve again the published ports recorded on this host's OVS interfaces,
        each into the namespace it was recorded with (no Neutron request)."""
        if self.forwarder is None or self.records is None:
            return 0
        restored = 0
        for record in self.records.published_records():
            endpoint_id, netns = record.get(ovs.ENDPOINT_KEY), record.get(ovs.NETNS_KEY, "")
            if not endpoint_id or not _is_netns_file(netns):
                continue  # the container is gone: its port is the garbage collector's
            _, published = spec.decode(record.get(ovs.PUBLISHED_KEY))
            target = Target(netns, record.get(ovs.TARGET_KEY, ""))
            try:
                self.forwarder.publish(endpoint_id, target, published)
                restored += 1
            except errors.KuryrError as exc:
                LOG.warning("endpoint %s: cannot publish again: %s", endpoint_id[:12], exc)
        return restored


def _rows(published: list[spec.Published]) -> list[tuple[str, int, str, int]]:
    return [(p.proto, p.container_port, p.host_ip, p.host_port) for p in published]


def _ifname(port_id: str) -> str:
    return VIF(port_id=port_id, mac="").host_ifname



def _is_netns_file(path: str) -> bool:
    """A namespace is there (only namespaces are opened: a FIFO could hang a thread)."""
    try:
        return bool(path) and is_netns(Path(path).stat())
    except OSError:
        return False


def published_ports_on_host(neutron: Neutron, where: Placement) -> list[Port]:
    return [p for p in neutron.ports(device_owner=marks.DOCKER_OWNERS.container,
                                     **where.port_filters())
            if (p.description or "").startswith(spec.DESCRIPTION_PREFIX)]

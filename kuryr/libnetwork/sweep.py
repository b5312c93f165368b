"""Start-up sweep: Neutron ports this host's Kuryr made for containers that
are gone (Kuryr stopped before their deletion reached Neutron).

A port is this host's and Kuryr's when it is bound to this host with a Kuryr
device_owner; its container is gone when the host end of its veth is gone.
Ports adopted from the user are only unbound, never deleted.
"""

from __future__ import annotations

import datetime
import logging

from kuryr.binding import netlink
from kuryr.binding.vif import VIF
from kuryr.libnetwork.context import Context
from kuryr.neutron import marks

LOG = logging.getLogger(__name__)
# A port between RequestAddress and CreateEndpoint has no veth yet.
UNBOUND_GRACE = datetime.timedelta(minutes=2)


def _age(port: object) -> datetime.timedelta:
    try:
        created = datetime.datetime.fromisoformat(str(port.created_at).replace("Z", "+00:00"))
    except ValueError:
        return datetime.timedelta(0)
    return datetime.datetime.now(datetime.UTC) - created


def orphaned_ports(ctx: Context) -> list:
    """2 GETs."""
    found = []
    for owner in (marks.DEVICE_OWNER, marks.UNBOUND_DEVICE_OWNER):
        for port in ctx.neutron.ports(device_owner=owner, binding_host_id=ctx.host):
            if netlink.link_exists(VIF(port_id=port.id, mac=port.mac_address).host_ifname):
                continue
            if owner == marks.UNBOUND_DEVICE_OWNER and _age(port) < UNBOUND_GRACE:
                continue
            found.append(port)
    return found


def sweep(ctx: Context, dry_run: bool = False) -> list[str]:
    removed = []
    for port in orphaned_ports(ctx):
        adopted = marks.PORT_EXISTING_TAG in (port.tags or [])
        LOG.info("%s orphaned port %s (%s)", "would remove" if dry_run else "removing",
                 port.id, "adopted: unbind" if adopted else "delete")
        removed.append(port.id)
        if dry_run:
            continue
        if adopted:
            ctx.neutron.update_port(port.id, binding_host_id="", device_owner="",
                                    device_id="")
        else:
            ctx.neutron.delete_port(port.id)
    return removed

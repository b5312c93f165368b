"""Whose port is it?  The one place that decides which Neutron ports Kuryr may use.

Kuryr may use only ports it made on this host (with its own front end's
device owners: Docker's Kuryr and the CNI daemon never use each other's), the port of one of this
host's endpoints, or a port a user made for it on purpose: without an owner
(no device_owner, no device_id).  A VM's port, another host's container, or
Neutron's own DHCP/metadata port is never Kuryr's, whatever address it holds.
"""

from __future__ import annotations

import enum

from kuryr import errors
from kuryr.core.placement import Placement
from kuryr.neutron import marks
from kuryr.neutron.types import Port

# Neutron's own ports (DHCP, metadata, router interfaces...) all say "network:".
NEUTRON_OWNER_PREFIX = "network:"


class Claim(enum.Enum):
    OURS = "ours"  # made by this host's Kuryr, or already this endpoint's
    USER_PRECREATED = "user pre-created"  # ownerless: adopt it (tag kuryr.port.existing)


def describe(port: Port) -> str:
    owner = port.device_owner or "no owner"
    where = f", bound to {port.binding_host_id}" if port.binding_host_id else ""
    device = f", device {port.device_id}" if port.device_id else ""
    return f"Neutron port {port.id} ({owner}{device}{where})"


def claim(port: Port, owners: marks.Owners, placement: Placement,
          endpoint_id: str = "") -> Claim:
    """May the front end owning ``owners`` where ``placement`` says use ``port`` for
    ``endpoint_id``?  When not, a Conflict whose message names the holder: the
    port and its owner (another front end's port is never claimed)."""
    if port.device_owner.startswith(NEUTRON_OWNER_PREFIX):
        raise errors.Conflict(f"Neutron's own {describe(port)}, never a container's")
    if endpoint_id and port.device_id == endpoint_id:
        return Claim.OURS  # Docker replays CreateEndpoint after a Kuryr restart
    if port.device_owner in owners.all:
        if not placement.holds(port):
            raise errors.Conflict(f"a container of another host or VM: {describe(port)}")
        if port.device_id:
            raise errors.Conflict(f"another endpoint: {describe(port)}")
        return Claim.OURS
    if not port.device_owner and not port.device_id:
        if port.binding_host_id and port.binding_host_id != placement.binding_host_id:
            raise errors.Conflict(f"a port bound elsewhere: {describe(port)}")
        return Claim.USER_PRECREATED
    raise errors.Conflict(f"{describe(port)}; Kuryr uses only ports it made or ports "
                          "made for it without an owner")


def is_adopted(port: Port) -> bool:
    """A user's port Kuryr uses: given back unbound and ownerless, never deleted."""
    return marks.PORT_EXISTING_TAG in port.tags


def is_this_hosts(port: Port, owners: marks.Owners, host: str) -> bool:
    """Made by this front end's Kuryr for this host (the only ports its cleanup
    paths may delete)."""
    return port.device_owner in owners.all and port.binding_host_id == host

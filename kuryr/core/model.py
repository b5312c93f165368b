"""The core's own records: a Docker (or CNI) network on Neutron, and a lease
of a port to whoever asked for an address."""

from __future__ import annotations

import ipaddress
import time
from dataclasses import dataclass, field

from kuryr.neutron import marks
from kuryr.neutron.types import Port, Subnet


@dataclass(frozen=True)
class NetworkRecord:
    """A front end's network and the Neutron network behind it (immutable facts)."""

    docker_id: str
    neutron_id: str
    mtu: int | None
    subnets: tuple[Subnet, ...] = ()
    adopted: bool = False
    tags: tuple[str, ...] = ()

    @property
    def pairs_families(self) -> bool:
        """Docker asks for an IPv4 and an IPv6 address per endpoint, in two calls
        that carry nothing in common: the port must hold both."""
        return marks.NET_IPV6_TAG in self.tags and {s.ip_version for s in self.subnets} == {4, 6}

    def subnet_of_pool(self, cidr: str, ip_range: str = "") -> Subnet | None:
        """The subnet behind a Docker pool: the pool's CIDR, else its --ip-range
        (an adopted subnet laid out as kuryr-libnetwork does: subnet = range)."""
        return next((s for s in self.subnets if s.cidr == cidr), None) or next(
            (s for s in self.subnets if ip_range and s.cidr == ip_range), None)

    def subnet_of(self, address: str) -> Subnet | None:
        ip = ipaddress.ip_address(address)
        return next((s for s in self.subnets if ip in ipaddress.ip_network(s.cidr)), None)

    def pool_size(self, default: int) -> int:
        for tag in self.tags:
            if tag.startswith(marks.NET_POOL_TAG):
                try:
                    return max(0, int(tag[len(marks.NET_POOL_TAG):]))
                except ValueError:
                    break
        return default


@dataclass(frozen=True)
class PendingPool:
    """What RequestPool decided that CreateNetwork needs (Docker passes only the CIDR)."""

    token: str
    cidr: str
    ip_range: str = ""
    subnetpool_id: str | None = None
    existing_subnet_id: str | None = None
    gateway: str | None = None  # the existing subnet's, answered to Docker's gateway request
    # Kuryr's subnetpools whose subnets may overlap ``cidr``: a new subnet is
    # checked against theirs first (Neutron refuses overlaps only in a network).
    overlap_pools: tuple[str, ...] = ()


@dataclass
class Lease:
    """One hand-out of a port: from RequestAddress (or CreateEndpoint with another
    IPAM) until the endpoint is gone and Docker has released its addresses.

    ``generation`` says which hand-out of the port this is: the port may be
    recycled and handed out again while a late ReleaseAddress of this lease
    is still on its way; such a release must not touch the port."""

    port: Port
    generation: int
    network_id: str  # Neutron network
    from_pool: bool = False
    held: set[str] = field(default_factory=set)  # addresses Docker has not released
    endpoint_id: str | None = None
    expose_group: str | None = None  # Kuryr's group for --expose/-p, deleted with the port
    netns: str | None = None  # the container's namespace, known from Join
    plain: bool = True  # nothing endpoint-specific was set: it can serve the next one
    ended: bool = False  # the endpoint is gone: the port was recycled, deleted or given back
    record_tags: tuple[str, ...] = ()  # tags a front end's record put on the port (a pod's)
    made_at: float = field(default_factory=time.monotonic)

    @property
    def adopted(self) -> bool:
        return marks.PORT_EXISTING_TAG in self.port.tags

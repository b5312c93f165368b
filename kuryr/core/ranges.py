"""Docker's --ip-range as Neutron allocation pools, in O(1) time and memory.

Neutron's own IPAM leaves out the subnet's first address (and, for IPv4, the
broadcast address); a pool may not contain the gateway.  Nothing here walks
the addresses of a range: an IPv6 /64 has 2**64 of them.
"""

from __future__ import annotations

import ipaddress

from kuryr.neutron.types import IPV4

_POINT_TO_POINT = 2  # addresses of a /31 or /127: both usable


def allocation_pools(subnet_cidr: str, ip_range: str,
                     gateway: str | None) -> list[tuple[str, str]]:
    """The (start, end) pools covering ``ip_range`` inside ``subnet_cidr``, gateway excluded."""
    subnet = ipaddress.ip_network(subnet_cidr)
    wanted = ipaddress.ip_network(ip_range)
    if wanted.version != subnet.version or not wanted.subnet_of(subnet):  # type: ignore[arg-type]
        raise ValueError(f"ip-range {ip_range} is not inside {subnet_cidr}")
    # As Neutron's own IPAM: not the subnet's first address, nor IPv4's broadcast
    # address, except in subnets too small to have them (/31, /32, /127, /128).
    usable_first = int(subnet.network_address) + (1 if subnet.num_addresses > 1 else 0)
    has_broadcast = subnet.version == IPV4 and subnet.num_addresses > _POINT_TO_POINT
    usable_last = int(subnet.broadcast_address) - (1 if has_broadcast else 0)
    first = max(int(wanted.network_address), usable_first)
    last = min(int(wanted.broadcast_address), usable_last)
    if first > last:
        raise ValueError(f"ip-range {ip_range} has no usable address in {subnet_cidr}")
    spans = [(first, last)]
    if gateway:
        gw = int(ipaddress.ip_address(gateway))
        if first <= gw <= last:
            spans = [(a, b) for a, b in ((first, gw - 1), (gw + 1, last)) if a <= b]
    if not spans:
        raise ValueError(f"ip-range {ip_range} holds only the gateway {gateway}")
    make = ipaddress.IPv4Address if subnet.version == IPV4 else ipaddress.IPv6Address
    return [(str(make(a)), str(make(b))) for a, b in spans]


def first_host(cidr: str) -> str:
    """The subnet's first usable address (Docker's default gateway), O(1)."""
    net = ipaddress.ip_network(cidr)
    offset = 1 if net.num_addresses > _POINT_TO_POINT else 0
    return str(net.network_address + offset)

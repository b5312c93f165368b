"""What the Docker handlers share: clients built at start-up and caches.

Neutron is the source of truth.  The caches only hold what cannot change
(a subnet's CIDR and gateway, a network's MTU) or what Kuryr itself decided
during an endpoint's life, so a restarted Kuryr rebuilds them from Neutron on
first use and loses nothing.
"""

from __future__ import annotations

import concurrent.futures
import ipaddress
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from oslo_config import cfg

from kuryr.binding.ovs import OVS
from kuryr.libnetwork.background import Background
from kuryr.neutron import marks
from kuryr.neutron.client import Neutron
from kuryr.publish.forwarder import Forwarder

if TYPE_CHECKING:
    from kuryr.libnetwork.pool import PortPool


@dataclass(frozen=True)
class SubnetInfo:
    id: str
    network_id: str
    cidr: str
    gateway: str | None
    host_routes: tuple[tuple[str, str], ...] = ()

    @property
    def version(self) -> int:
        return ipaddress.ip_network(self.cidr).version

    @property
    def prefixlen(self) -> int:
        return ipaddress.ip_network(self.cidr).prefixlen


@dataclass
class NetworkInfo:
    """A Docker network and the Neutron network behind it."""

    docker_id: str
    neutron_id: str
    mtu: int | None
    subnets: list[SubnetInfo] = field(default_factory=list)
    adopted: bool = False
    tags: list[str] = field(default_factory=list)

    @property
    def ipv6(self) -> bool:
        """Docker requests an IPv6 address for each endpoint (--ipv6)."""
        return marks.NET_IPV6_TAG in self.tags

    def pool_size(self, default: int) -> int:
        for tag in self.tags:
            if tag.startswith(marks.NET_POOL_TAG):
                try:
                    return max(0, int(tag[len(marks.NET_POOL_TAG):]))
                except ValueError:
                    break
        return default


@dataclass
class PortInfo:
    """A Neutron port Kuryr handed an address from."""

    id: str
    network_id: str
    mac: str
    addresses: dict[str, str]  # ip -> subnet id
    vif_type: str = "ovs"
    bridge: str | None = None
    adopted: bool = False
    endpoint_id: str | None = None
    security_groups: list[str] = field(default_factory=list)
    expose_group: str | None = None  # Kuryr's group for --expose / -p, deleted with the port
    netns: str | None = None  # Docker's SandboxKey, known from Join
    # Nothing of the endpoint's own was set on the port (security groups, published
    # ports, MAC): when the container leaves, the port can serve the next one.
    plain: bool = False


@dataclass
class PendingPool:
    """What RequestPool learned that CreateNetwork needs (Docker passes only the CIDR)."""

    cidr: str
    sub_pool: str = ""
    subnetpool_id: str | None = None
    existing_subnet_id: str | None = None


class BoundedSet:
    """Remembers the last ``size`` keys (addresses already released)."""

    def __init__(self, size: int = 4096) -> None:
        self._items: OrderedDict[str, None] = OrderedDict()
        self._size = size

    def add(self, key: str) -> None:
        self._items[key] = None
        self._items.move_to_end(key)
        while len(self._items) > self._size:
            self._items.popitem(last=False)

    def discard(self, key: str) -> None:
        self._items.pop(key, None)

    def __contains__(self, key: str) -> bool:
        return key in self._items


class Context:
    """Built once by the server from config and passed to every handler."""

    def __init__(self, conf: cfg.ConfigOpts, neutron: Neutron, ovs: OVS, host: str,
                 forwarder: Forwarder | None = None,
                 background: Background | None = None) -> None:
        self.conf = conf
        self.neutron = neutron
        self.ovs = ovs
        self.host = host
        self.forwarder = forwarder
        self.background = background
        self.lock = threading.RLock()
        self.networks: dict[str, NetworkInfo] = {}  # Docker network id -> info
        self.subnets_by_cidr: dict[str, SubnetInfo] = {}
        self.pending_pools: dict[str, PendingPool] = {}  # cidr -> what RequestPool saw
        self.reserved_cidrs: set[str] = set()  # handed to Docker, subnet not created yet
        self.ports_by_address: dict[str, PortInfo] = {}  # ip -> port handed out
        # Dual-stack: Docker asks for the IPv4 then the IPv6 address of an
        # endpoint in two calls that carry nothing in common; Kuryr pairs them
        # by serializing each network's pairs (v4 call takes, v6 call releases).
        self.awaiting_v6: dict[str, PortInfo] = {}
        self.pair_locks: dict[str, threading.Semaphore] = {}
        self.pool: PortPool | None = None
        self.endpoints: dict[str, PortInfo] = {}  # Docker endpoint id -> port
        self.released: BoundedSet = BoundedSet()  # "cidr|address" already freed
        self.subnetpool_ids: dict[int, str] = {}  # ip version -> Kuryr's default pool
        self.subnetpool_prefixes: dict[int, list[str]] = {}
        self.dns_enabled = False  # Neutron has the dns-integration extension
        # Floating-IP publishing (kuryr/libnetwork/floating.py), set up on first use.
        self.publish_router: str | None = None
        self.publish_fip: str | None = None
        self.publish_address: str | None = None
        self.router_subnets: set[str] = set()
        # Host-side cleanup of containers that are gone (OVS + veth removal): one
        # thread of its own, so it never waits behind Neutron writes.
        self.cleaner = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="unplug")

    def remember_port(self, port: PortInfo) -> None:
        with self.lock:
            for ip in port.addresses:
                self.ports_by_address[ip] = port

    def forget_addresses(self, port: PortInfo) -> None:
        with self.lock:
            for ip in port.addresses:
                if self.ports_by_address.get(ip) is port:
                    del self.ports_by_address[ip]

    def pair_lock(self, network_id: str) -> threading.Semaphore:
        with self.lock:
            return self.pair_locks.setdefault(network_id, threading.Semaphore(1))

    def later(self, key: str, what: str, action: object) -> None:
        """Run a Neutron write off the critical path (inline when there is no worker)."""
        if self.background is None:
            action()
        else:
            self.background.submit(key, what, action)

    @staticmethod
    def release_key(cidr: str, address: str) -> str:
        return f"{cidr}|{address}"

"""What a load balancer should be, what the backend reports it is, and the
interface of a backend.  Pure data: no I/O here."""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol


class Protocol_(enum.StrEnum):  # noqa: N801 - "Protocol" is typing's
    TCP = "TCP"
    UDP = "UDP"
    SCTP = "SCTP"


@dataclass(frozen=True, order=True)
class Member:
    address: str
    port: int
    subnet_id: str  # the backend's subnet: OVN attaches the load balancer to it


@dataclass(frozen=True)
class Listener:
    """One (protocol, port) of the VIP, with its pool of members."""

    protocol: Protocol_
    port: int
    members: frozenset[Member] = frozenset()

    @property
    def name(self) -> str:
        """How a listener and its pool are found again: "TCP:80"."""
        return f"{self.protocol}:{self.port}"


@dataclass(frozen=True)
class LoadBalancer:
    """The wanted state of one Service's load balancer."""

    owner_tag: str  # names the Service (its uid): how the load balancer is found again
    name: str  # for people: kuryr/<namespace>/<name>
    vip_address: str
    vip_subnet_id: str
    listeners: tuple[Listener, ...]
    algorithm: str = "SOURCE_IP_PORT"  # SOURCE_IP for sessionAffinity: ClientIP
    tags: tuple[str, ...] = ()  # beside owner_tag: what marks it as Kuryr's
    project_id: str = ""  # the VIP subnet's: needed by an Octavia without Keystone

    def listener(self, name: str) -> Listener | None:
        return next((lst for lst in self.listeners if lst.name == name), None)


class Busy(Exception):
    """The backend refuses a change now: the load balancer (or a part of it) is
    carrying out an earlier one.  Try again later."""


class Status(enum.StrEnum):
    ACTIVE = "ACTIVE"
    ERROR = "ERROR"
    PENDING_CREATE = "PENDING_CREATE"
    PENDING_UPDATE = "PENDING_UPDATE"
    PENDING_DELETE = "PENDING_DELETE"
    DELETED = "DELETED"

    @property
    def pending(self) -> bool:
        return self.name.startswith("PENDING")


@dataclass(frozen=True)
class SeenListener:
    id: str
    name: str
    pool_id: str | None  # None: its pool is not made yet
    members: frozenset[tuple[str, int]] = frozenset()  # (address, port)


@dataclass(frozen=True)
class SeenLoadBalancer:
    """A load balancer as the backend reports it (one read)."""

    id: str
    status: Status
    vip_address: str
    vip_port_id: str
    listeners: tuple[SeenListener, ...] = field(default=())

    def listener(self, name: str) -> SeenListener | None:
        return next((lst for lst in self.listeners if lst.name == name), None)


class LoadBalancerDriver(Protocol):
    """A backend of Services' load balancers.  Every write returns as soon as
    the backend accepted it: the load balancer is then busy (pending) until
    the backend has carried it out, which ``find`` shows."""

    def find(self, owner_tag: str) -> SeenLoadBalancer | None:
        """The load balancer tagged ``owner_tag`` with its listeners, pools
        and members; None: there is none."""
        ...

    def owned(self, tag: str) -> list[tuple[str, tuple[str, ...]]]:
        """(id, tags) of every load balancer tagged ``tag``."""
        ...

    def create(self, lb: LoadBalancer) -> None:
        """The load balancer with all its listeners, pools and members, at once."""
        ...

    def create_listener(self, lb_id: str, lb: LoadBalancer, listener: Listener) -> None: ...

    def create_pool(self, lb: LoadBalancer, listener_id: str, listener: Listener) -> None:
        """The listener's pool with its members, at once."""
        ...

    def delete_listener(self, listener: SeenListener) -> None:
        """The listener and its pool (pool first: a listener's pool outlives it)."""
        ...

    def replace_members(self, pool_id: str, members: Sequence[Member]) -> None:
        """All the pool's members in one request (added, kept, removed)."""
        ...

    def delete(self, lb_id: str) -> None:
        """The load balancer and everything in it (cascade)."""
        ...

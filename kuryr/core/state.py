"""What this process knows, behind one lock and narrow, named methods.

Neutron (tags, device_id/owner) and OVS external_ids are the source of truth;
this is a cache of immutable facts (networks, subnets) and of the leases of
the requests in flight, rebuilt from Neutron on first use after a restart.
The lock is never held across a network call: every method is a few dict
operations.
"""

from __future__ import annotations

import collections
import threading
import time

from kuryr.core.model import Lease, NetworkRecord, PendingPool
from kuryr.neutron.types import Port

# Ended leases kept per address for late ReleaseAddress calls; Docker sends at
# most one per hand-out, so a few are plenty and memory stays bounded.
ENDED_KEPT = 4


class State:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._networks: dict[str, NetworkRecord] = {}  # Docker network id ->
        self._pending: dict[str, PendingPool] = {}  # pool token ->
        self._reserved_cidrs: set[str] = set()  # chosen by RequestPool, subnet not made yet
        self._holds: dict[tuple[str, str], collections.deque[Lease]] = {}  # (net, ip) ->
        self._endpoints: dict[str, Lease] = {}  # endpoint id ->
        self._generations: dict[str, int] = {}  # port id -> hand-outs so far
        self._awaiting_v6: dict[str, collections.deque[Lease]] = {}  # Neutron net ->
        self._live: dict[str, Lease] = {}  # port id -> its lease that has not ended

    # -- networks -------------------------------------------------------------------
    def add_network(self, net: NetworkRecord) -> None:
        with self._lock:
            self._networks[net.docker_id] = net

    def network(self, docker_id: str) -> NetworkRecord | None:
        with self._lock:
            return self._networks.get(docker_id)

    def network_by_neutron_id(self, neutron_id: str) -> NetworkRecord | None:
        with self._lock:
            return next((n for n in self._networks.values() if n.neutron_id == neutron_id),
                        None)

    def networks_tagged(self, tag: str) -> list[NetworkRecord]:
        with self._lock:
            return [n for n in self._networks.values() if tag in n.tags]

    def networks_with_cidr(self, cidr: str) -> list[NetworkRecord]:
        with self._lock:
            return [n for n in self._networks.values() if any(s.cidr == cidr for s in n.subnets)]

    def drop_network(self, docker_id: str) -> None:
        with self._lock:
            net = self._networks.pop(docker_id, None)
            if net is None:
                return
            for key in [k for k in self._holds if k[0] == net.neutron_id]:
                del self._holds[key]
            self._awaiting_v6.pop(net.neutron_id, None)

    # -- pools requested but not yet a network ----------------------------------------
    def add_pending_pool(self, pending: PendingPool) -> None:
        with self._lock:
            self._pending[pending.token] = pending

    def pending_pool(self, token: str) -> PendingPool | None:
        with self._lock:
            return self._pending.get(token)

    def claim_pending_pool(self, cidr: str) -> PendingPool | None:
        """The oldest pool requested for ``cidr`` (CreateNetwork names only the CIDR;
        Docker requests a network's pools right before creating it)."""
        with self._lock:
            token = next((t for t, p in self._pending.items() if p.cidr == cidr), None)
            return self._pending.pop(token) if token else None

    def drop_pending_pool(self, token: str) -> None:
        with self._lock:
            pending = self._pending.pop(token, None)
            if pending is not None:
                self._reserved_cidrs.discard(pending.cidr)

    def reserve_cidr(self, cidr: str) -> None:
        with self._lock:
            self._reserved_cidrs.add(cidr)

    def reserved_cidrs(self) -> set[str]:
        with self._lock:
            return set(self._reserved_cidrs)

    def unreserve_cidr(self, cidr: str) -> None:
        with self._lock:
            self._reserved_cidrs.discard(cidr)

    # -- leases -------------------------------------------------------------------------
    def hand_out(self, port: Port, network_id: str, from_pool: bool = False) -> Lease:
        """A new lease of ``port``: its generation moves on, so older leases of the
        same port are stale from now on."""
        with self._lock:
            generation = self._generations.get(port.id, 0) + 1
            self._generations[port.id] = generation
            lease = Lease(port=port, generation=generation, network_id=network_id,
                          from_pool=from_pool)
            self._live[port.id] = lease
            return lease

    def live_lease(self, port_id: str) -> Lease | None:
        """The lease of ``port_id`` that has not ended, if this process handed one out."""
        with self._lock:
            return self._live.get(port_id)

    def is_current(self, lease: Lease) -> bool:
        with self._lock:
            return self._generations.get(lease.port.id) == lease.generation

    def hold(self, lease: Lease, address: str) -> None:
        """Docker now holds ``address`` from ``lease`` until it releases it."""
        with self._lock:
            lease.held.add(address)
            holds = self._holds.setdefault((lease.network_id, address), collections.deque())
            holds.append(lease)
            while len(holds) > ENDED_KEPT and holds[0].ended:
                holds.popleft()

    def unattached_lease(self, network_id: str, address: str) -> Lease | None:
        """The newest lease holding ``address`` that no endpoint has taken yet."""
        with self._lock:
            for lease in reversed(self._holds.get((network_id, address), ())):
                if not lease.ended and lease.endpoint_id is None:
                    return lease
            return None

    def release_hold(self, network_id: str, address: str) -> Lease | None:
        """Docker released ``address``: the oldest lease holding it (Docker releases
        in the order it was handed out), or None when this process never saw it."""
        with self._lock:
            holds = self._holds.get((network_id, address))
            if not holds:
                return None
            lease = holds.popleft()
            if not holds:
                del self._holds[(network_id, address)]
            lease.held.discard(address)
            return lease

    def forget_holds(self, lease: Lease) -> None:
        with self._lock:
            for address in lease.held:
                holds = self._holds.get((lease.network_id, address))
                if holds and lease in holds:
                    holds.remove(lease)
                    if not holds:
                        del self._holds[(lease.network_id, address)]
            lease.held.clear()

    # -- dual-stack pairing ----------------------------------------------------------------
    def await_v6(self, lease: Lease) -> None:
        with self._lock:
            self._awaiting_v6.setdefault(lease.network_id, collections.deque()).append(lease)

    def next_awaiting_v6(self, network_id: str) -> Lease | None:
        """The newest lease whose IPv4 address was handed out without its IPv6 one:
        dockerd asks for an endpoint's IPv6 address right after its IPv4 one, and
        sends a network's pairs one after another (an older lease still waiting
        is one whose IPv6 call dockerd dropped, e.g. a refused --ip6)."""
        with self._lock:
            waiting = self._awaiting_v6.get(network_id)
            while waiting:
                lease = waiting.pop()
                if not lease.ended and lease.endpoint_id is None:
                    return lease
            return None

    def abandoned_v6_partners(self, network_id: str, older_than: float) -> list[Lease]:
        """Leases still waiting for an IPv6 call ``older_than`` seconds after their
        IPv4 one: dockerd dropped the start without releasing the address."""
        cutoff = time.monotonic() - older_than
        with self._lock:
            waiting = self._awaiting_v6.get(network_id)
            if not waiting:
                return []
            old = [lease for lease in waiting if lease.made_at < cutoff]
            for lease in old:
                waiting.remove(lease)
            return [lease for lease in old if not lease.ended and lease.endpoint_id is None]

    def stop_awaiting_v6(self, lease: Lease) -> None:
        with self._lock:
            waiting = self._awaiting_v6.get(lease.network_id)
            if waiting and lease in waiting:
                waiting.remove(lease)

    def in_flight_lease_of_port(self, network_id: str, address: str) -> Lease | None:
        """An unattached lease whose port holds ``address`` (it may be another
        endpoint's partner address after an interleaved dual-stack start)."""
        with self._lock:
            for (net, _), holds in self._holds.items():
                if net != network_id:
                    continue
                for lease in holds:
                    if (not lease.ended and lease.endpoint_id is None
                            and address in lease.port.addresses):
                        return lease
            return None

    # -- endpoints --------------------------------------------------------------------------
    def attach(self, lease: Lease, endpoint_id: str) -> bool:
        """``lease`` now serves ``endpoint_id``; False when the endpoint already has one."""
        with self._lock:
            if endpoint_id in self._endpoints:
                return False
            lease.endpoint_id = endpoint_id
            self._endpoints[endpoint_id] = lease
            return True

    def endpoint(self, endpoint_id: str) -> Lease | None:
        with self._lock:
            return self._endpoints.get(endpoint_id)

    def detach(self, endpoint_id: str) -> Lease | None:
        """The endpoint is gone: its lease ends (the port moves on or is deleted)."""
        with self._lock:
            lease = self._endpoints.pop(endpoint_id, None)
            if lease is not None:
                self._end_locked(lease)
            return lease

    def unattach(self, lease: Lease) -> None:
        """CreateEndpoint failed: the lease is Docker's to release again."""
        with self._lock:
            if lease.endpoint_id is not None:
                self._endpoints.pop(lease.endpoint_id, None)
                lease.endpoint_id = None

    def end(self, lease: Lease) -> None:
        with self._lock:
            self._end_locked(lease)

    def _end_locked(self, lease: Lease) -> None:
        lease.ended = True
        if self._live.get(lease.port.id) is lease:
            del self._live[lease.port.id]

    def live_port_ids(self, unattached_for: float) -> set[str]:
        """Ports handed out by this process and not yet done with: serving an
        endpoint, or handed out less than ``unattached_for`` seconds ago (older
        unattached ones were abandoned by their caller: fair game for the
        garbage collector)."""
        cutoff = time.monotonic() - unattached_for
        with self._lock:
            return {port_id for port_id, lease in self._live.items()
                    if lease.endpoint_id is not None or lease.made_at >= cutoff}

    def ports_in_use(self) -> set[str]:
        with self._lock:
            return {lease.port.id for lease in self._endpoints.values()}

"""Ports made ahead of time, so a container start waits for no Neutron write.

For each network this host keeps a few ports ready: created in one bulk
request, bound to this host, and plugged (veth in br-int) so OVN has already
wired them.  A request takes one with no Neutron request at all; the
container takes the port's MAC.  The pool's own thread refills it.

Bookkeeping lives in Neutron and on the host, so it survives a crash: pooled
ports carry the front end's pool device_owner (``kuryr:pool`` for Docker,
``kuryr-k8s:pool`` for pods: a pool never hands out another front end's
port), no device_id, and are bound to this host.  After a restart a pooled
port is free only when all of these hold: Neutron says so (that owner, no
device_id), OVS names no endpoint on
its interface, and its container end is still in the host namespace.
"""

from __future__ import annotations

import collections
import logging
import threading
import time

from kuryr.core.background import Background
from kuryr.core.binder import Binder, vif_of
from kuryr.core.lull import Lull
from kuryr.core.model import NetworkRecord
from kuryr.core.placement import OnHost, Placement
from kuryr.neutron import marks
from kuryr.neutron.client import Neutron
from kuryr.neutron.types import NewPort, Port

LOG = logging.getLogger(__name__)

MAX_BULK = 64  # ports per bulk request
RETURN_WAIT = 10.0  # a drain waits this long at most for ports still coming back


class _Waiter:
    def __init__(self) -> None:
        self.event = threading.Event()
        self.port: Port | None = None


class PortPool:
    def __init__(self, neutron: Neutron, binder: Binder, background: Background, host: str,
                 default_size: int, default_bridge: str, *, owners: marks.Owners,
                 security_group_ids: tuple[str, ...] = (), lull: Lull | None = None,
                 batch: int = MAX_BULK, placement: Placement | None = None) -> None:
        self.neutron = neutron
        # Where pooled ports live: bound to ``host``, or (nested) attached to a VM.
        self.placement: Placement = placement or OnHost(host)
        self.owners = owners
        # Made with the front end's groups, so a taken port needs no PUT for them.
        self.security_group_ids = security_group_ids
        self.binder = binder
        self.background = background
        self.host = host
        self.default_size = default_size
        self.default_bridge = default_bridge
        # A refill nobody waits for waits for a lull in container starts.
        self._lull = lull
        # Ports per bulk create: a large pool fills in rounds, so the first waiters
        # are served after one short request, and no request nears the client's
        # timeout (a 50-port POST took 30-36 s here, and timed out once).
        self.batch = max(1, min(batch, MAX_BULK))
        self._ready: dict[str, collections.deque[Port]] = {}  # Neutron network id ->
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._wanted: dict[str, NetworkRecord] = {}
        self._known: set[str] = set()  # networks whose pooled ports this process knows all of
        self._net_locks: dict[str, threading.Lock] = {}  # a fill and a drain never overlap
        self._drained: set[str] = set()  # networks being deleted: never fill again
        self._waiters: dict[str, list[_Waiter]] = {}  # requests waiting for the next fill
        # Accepted back, endpoint not yet cleared in OVS: port id -> network id.
        self._returning: dict[str, str] = {}
        self._back = threading.Condition(self._lock)  # a returning port arrived
        self._thread = threading.Thread(target=self._run, name="port-pool", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        self._wake.set()
        if self._lull is not None:
            self._lull.interrupt()
        if self._thread.is_alive():
            self._thread.join(timeout=10)

    # -- handing out ---------------------------------------------------------------------
    def take(self, net: NetworkRecord, wait: float = 0.0) -> Port | None:
        """A ready port of ``net`` (no Neutron request).

        When the pool is empty and ``wait`` > 0, wait for the next refill: the
        requests of a burst are then served by one bulk create instead of one
        POST each.  None when nothing came in time (the caller creates a port)."""
        with self._lock:
            ready = self._ready.get(net.neutron_id)
            port = ready.popleft() if ready else None
            waiter = None
            if port is None and wait > 0 and self.size_of(net) > 0:
                waiter = _Waiter()
                self._waiters.setdefault(net.neutron_id, []).append(waiter)
        self.refill_soon(net)
        if waiter is not None and self._lull is not None:
            self._lull.interrupt()  # a refill held for a lull is now awaited
        if waiter is None:
            return port
        waiter.event.wait(wait)
        with self._lock:
            if waiter.port is None:
                waiters = self._waiters.get(net.neutron_id, [])
                if waiter in waiters:
                    waiters.remove(waiter)
            return waiter.port

    def claim(self, network_id: str, port_id: str) -> Port | None:
        """Take a specific ready port out of the pool (a request whose address a
        restarted Kuryr put back in the pool before Docker's retry arrived)."""
        with self._lock:
            # One on its way back is ready within milliseconds: wait for it, so it
            # is never handed out both to this caller and from the ready list.
            self._back.wait_for(lambda: port_id not in self._returning, timeout=RETURN_WAIT)
            ready = self._ready.get(network_id, collections.deque())
            port = next((p for p in ready if p.id == port_id), None)
            if port is not None:
                ready.remove(port)
            return port

    def recycle(self, net: NetworkRecord, port: Port) -> bool:
        """Take back a port now, if it can serve the next container as it is."""
        return self.accepts(net, port) and self.take_back(net, port)

    def accepts(self, net: NetworkRecord, port: Port) -> bool:
        """Will the pool take back this port of a container that left?  Yes when its
        veth is back in the host namespace (Docker moves it out of the
        container's) and the pool holds less than twice its size.  The caller
        knows the port is plain (nothing endpoint-specific set on it), and must
        call take_back next: until then the port counts as held."""
        vif = vif_of(port, net.mtu, self.default_bridge)
        if self.size_of(net) <= 0 or not self.binder.is_free(vif):
            return False
        with self._lock:
            ready = self._ready.setdefault(net.neutron_id, collections.deque())
            # Ports on their way back count: a burst of deletions must not
            # overfill the pool between the check and the return.
            returning = sum(1 for n in self._returning.values() if n == net.neutron_id)
            if net.neutron_id in self._drained or \
                    len(ready) + returning >= 2 * self.size_of(net):
                return False
            self._returning[port.id] = net.neutron_id
            return True

    def take_back(self, net: NetworkRecord, port: Port) -> bool:
        """Clear the port's endpoint in OVS (one OVSDB transaction) and make it ready
        (or, its network being deleted meanwhile, delete it); False when OVS
        refuses (the caller deletes the port)."""
        with self._lock:
            drained = net.neutron_id in self._drained
        try:
            if drained:
                self._delete_pooled_port(port)
                return True
            self.binder.forget_endpoint(vif_of(port, net.mtu, self.default_bridge))
        except Exception as exc:  # noqa: BLE001 - then it is simply not recycled
            LOG.warning("pool port %s: cannot take it back: %s", port.id, exc)
            if not drained:
                self._returned(port.id)
            return False
        finally:
            if drained:
                self._returned(port.id)
        with self._lock:
            self._returning.pop(port.id, None)
            self._back.notify_all()
            waiters = self._waiters.get(net.neutron_id, [])
            if waiters:
                waiter = waiters.pop(0)
                waiter.port = port
                waiter.event.set()
            else:
                self._ready.setdefault(net.neutron_id, collections.deque()).append(port)
        return True

    def _returned(self, port_id: str) -> None:
        with self._lock:
            self._returning.pop(port_id, None)
            self._back.notify_all()

    def held(self) -> set[str]:
        """Ids of the ports ready in the pool, or on their way back to it."""
        with self._lock:
            return {port.id for ready in self._ready.values() for port in ready} \
                | set(self._returning)

    def size_of(self, net: NetworkRecord) -> int:
        return net.pool_size(self.default_size)

    def refill_soon(self, net: NetworkRecord) -> None:
        if self.size_of(net) <= 0:
            return
        with self._lock:
            self._wanted[net.neutron_id] = net
        self._wake.set()

    # -- filling -----------------------------------------------------------------------------
    def _run(self) -> None:
        while not self._stopping.is_set():
            self._wake.wait()
            self._wake.clear()
            with self._lock:
                wanted = list(self._wanted.values())
                self._wanted.clear()
            for net in wanted:
                if self._stopping.is_set():
                    return
                self._wait_for_lull(net.neutron_id)
                try:
                    self._fill(net)
                except Exception as exc:  # noqa: BLE001 - the next take retries
                    LOG.warning("network %s: pool refill failed: %s", net.neutron_id, exc)

    def _wait_for_lull(self, network_id: str) -> None:
        """Until starts pause, unless a start waits for this very refill."""
        if self._lull is None:
            return

        def give_up() -> bool:
            with self._lock:
                return self._stopping.is_set() or bool(self._waiters.get(network_id))
        self._lull.wait(give_up)

    def _net_lock(self, network_id: str) -> threading.Lock:
        with self._lock:
            return self._net_locks.setdefault(network_id, threading.Lock())

    def _fill(self, net: NetworkRecord) -> None:
        try:
            with self._net_lock(net.neutron_id):
                self._fill_locked(net)
        except Exception:
            with self._lock:  # nobody waits for a fill that failed
                for waiter in self._waiters.pop(net.neutron_id, []):
                    waiter.event.set()
            raise

    def _fill_locked(self, net: NetworkRecord) -> None:
        """Called with the network's lock held, so a drain (same lock) never runs
        in the middle: what is created here is either handed out or drained later.
        (The network lock is the pool's own, per network: no request thread waits
        on it, so holding it across the bulk create blocks nobody's container.)"""
        with self._lock:
            if net.neutron_id in self._drained:
                return
            have = len(self._ready.get(net.neutron_id, ()))
            waiting = len(self._waiters.get(net.neutron_id, ()))
            self._known.add(net.neutron_id)
        wanted = self.size_of(net) - have + waiting
        missing = min(wanted, self.batch)
        if missing <= 0 or not net.subnets:
            return
        fixed_ips = tuple({"subnet_id": s.id} for s in net.subnets)
        started = time.monotonic()
        created = self.neutron.create_ports([NewPort(
            network_id=net.neutron_id, fixed_ips=fixed_ips,
            device_owner=self.owners.pool, binding_host_id=self.placement.binding_host_id,
            tags=self.placement.tags, name=marks.POOL_PORT_NAME,
            security_group_ids=self.security_group_ids)
            for _ in range(missing)])
        try:
            self.placement.attach(created)  # nested: all sub-ports in 1 PUT
        except Exception:
            for port in created:
                self.neutron.delete_port(port.id)
            raise
        plugging = time.monotonic()
        ready = []
        for port in created:
            try:
                self.binder.plug(vif_of(port, net.mtu, self.default_bridge))
            except Exception as exc:  # noqa: BLE001 - never leave an unplugged pool port
                LOG.warning("pool port %s: cannot plug: %s", port.id, exc)
                self.placement.detach([port])
                self.neutron.delete_port(port.id)
                continue
            ready.append(port)
        # Where a burst's time goes: Neutron's bulk create, or plugging here.
        LOG.info("network %s: %d ports made ready for the pool in %.2f s (bulk create "
                 "%.2f s), %d requests were waiting", net.neutron_id, len(ready),
                 time.monotonic() - started, plugging - started, waiting)
        progress = bool(ready)  # no more rounds after one whose ports all failed to plug
        with self._lock:
            waiters = self._waiters.get(net.neutron_id, [])
            while ready and waiters:
                waiter = waiters.pop(0)
                waiter.port = ready.pop(0)
                waiter.event.set()
            self._ready.setdefault(net.neutron_id, collections.deque()).extend(ready)
            if waiters or (progress and wanted > len(created)):  # more rounds to go
                self._wanted[net.neutron_id] = net
                self._wake.set()

    def _delete_pooled_port(self, port: Port, later: bool = False) -> None:
        """Unplug and delete a pooled port nobody uses (``later``: the Neutron
        DELETE in the background)."""
        # A recycled port may still have its return-to-pool PUT queued.
        self.background.cancel(port.id)
        self.binder.unplug(vif_of(port, None, self.default_bridge))

        def delete() -> None:
            self.placement.detach([port])
            self.neutron.delete_port(port.id)
        if later:
            self.background.submit(port.id, f"delete pooled port {port.id}", delete,
                                   group=port.network_id)
        else:
            delete()

    # -- network removal and restarts ---------------------------------------------------------
    def drain(self, net: NetworkRecord) -> None:
        """Delete the network's unused pooled ports (before the network itself)."""
        with self._lock:
            self._drained.add(net.neutron_id)
            # Ports on their way back (cleared in OVS by the unplug thread) are
            # deleted there, now that the network is drained: wait for them.
            self._back.wait_for(lambda: net.neutron_id not in self._returning.values(),
                                timeout=RETURN_WAIT)
        with self._net_lock(net.neutron_id):
            self._drain_locked(net)

    def _drain_locked(self, net: NetworkRecord) -> None:
        with self._lock:
            ports = list(self._ready.pop(net.neutron_id, ()))
            self._wanted.pop(net.neutron_id, None)
            known = net.neutron_id in self._known
        for port in ports:
            self._delete_pooled_port(port)
        if known or self.size_of(net) <= 0:
            return
        # Pooled ports this process may not know (made before a restart).
        for port in self.neutron.ports(network_id=net.neutron_id,
                                       device_owner=self.owners.pool,
                                       **self.placement.port_filters()):
            if self._is_free(port) or not self.binder.is_plugged(
                    vif_of(port, None, self.default_bridge)):
                self._delete_pooled_port(port)

    def _is_free(self, port: Port) -> bool:
        vif = vif_of(port, None, self.default_bridge)
        return (port.device_owner == self.owners.pool and not port.device_id
                and self.binder.is_plugged(vif) and self.binder.is_free(vif)
                and self.binder.endpoint_of(vif) is None)

    def _has_own_groups(self, port: Port) -> bool:
        return not self.security_group_ids or \
            set(port.security_group_ids) == set(self.security_group_ids)

    def restore(self) -> int:
        """Take back the free pooled ports of this host after a restart (1 GET).

        A port whose interface OVS says serves an endpoint, or whose device_id
        names one, is in use even if its container end has not moved yet (Kuryr
        was killed between CreateEndpoint and Docker moving the interface)."""
        free = 0
        ports = self.neutron.ports(device_owner=self.owners.pool,
                                   **self.placement.port_filters())
        with self._lock:
            self._known.update(p.network_id for p in ports)
        for port in ports:
            # Deleted in the background: a start-up must not wait for one DELETE
            # per leftover (a bulk create that timed out client-side may still
            # have made its ports: 260 of them took 80 s once).
            if not self.binder.is_plugged(vif_of(port, None, self.default_bridge)):
                self._delete_pooled_port(port, later=True)  # its veth is gone (reboot, crash)
            elif self._is_free(port) and not self._has_own_groups(port):
                # Its return to the pool (which sets the groups) died with the process:
                # it may still carry a previous pod's NetworkPolicy groups.
                self._delete_pooled_port(port, later=True)
            elif self._is_free(port):
                with self._lock:
                    self._ready.setdefault(port.network_id, collections.deque()).append(port)
                free += 1
            # else: in use by a container; found through its OVS interface or device_id.
        return free

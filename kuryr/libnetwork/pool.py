"""Ports made ahead of time, so a container start waits for no Neutron write.

For each Kuryr network this host keeps a few ports ready: created in one bulk
request, bound to this host, and plugged (veth in br-int) so OVN has already
wired them.  RequestAddress hands one out with no Neutron request at all; the
container takes the port's MAC (the IPAM driver does not ask Docker for one).
A background thread refills the pool.

Bookkeeping lives in Neutron and on the host, so it survives a crash: pooled
ports carry device_owner ``kuryr:pool`` and are bound to this host; one whose
container end of the veth is still in the host namespace is free, one whose
container end has moved into a container is in use (its OVS interface names
the endpoint), one without a veth is deleted.
"""

from __future__ import annotations

import collections
import logging
import threading

from kuryr.binding import netlink
from kuryr.binding.vif import VIF
from kuryr.libnetwork.context import Context, NetworkInfo, PortInfo
from kuryr.neutron import marks

LOG = logging.getLogger(__name__)


MAX_BULK = 64  # ports per bulk request


class _Waiter:
    def __init__(self) -> None:
        self.event = threading.Event()
        self.port: PortInfo | None = None


class PortPool:
    def __init__(self, ctx: Context, default_size: int) -> None:
        self.ctx = ctx
        self.default_size = default_size
        self._ready: dict[str, collections.deque[PortInfo]] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._wanted: dict[str, NetworkInfo] = {}
        self._known: set[str] = set()  # networks whose pooled ports this process knows all of
        self._net_locks: dict[str, threading.Lock] = {}  # a fill and a drain never overlap
        self._drained: set[str] = set()  # networks being deleted: never fill again
        self._waiters: dict[str, list[_Waiter]] = {}  # requests waiting for the next fill
        self._thread = threading.Thread(target=self._run, name="port-pool", daemon=True)
        self._thread.start()

    # -- handing out ---------------------------------------------------------------------
    def take(self, net: NetworkInfo, wait: float = 0.0) -> PortInfo | None:
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
        if waiter is None:
            return port
        waiter.event.wait(wait)
        with self._lock:
            if waiter.port is None:
                waiters = self._waiters.get(net.neutron_id, [])
                if waiter in waiters:
                    waiters.remove(waiter)
            return waiter.port

    def recycle(self, net: NetworkInfo, port: PortInfo) -> bool:
        """Take back the port of a container that left, if it can serve the next one
        as it is: plain (no endpoint-specific security groups, published ports or
        MAC), its veth back in the host namespace (Docker moves it out of the
        container's), and the pool not already holding twice its size."""
        vif = VIF(port_id=port.id, mac=port.mac)
        if not port.plain or self.size_of(net) <= 0 \
                or not netlink.link_exists(vif.container_ifname):
            return False
        with self._lock:
            ready = self._ready.setdefault(net.neutron_id, collections.deque())
            if net.neutron_id in self._drained or len(ready) >= 2 * self.size_of(net):
                return False
        try:
            self.ctx.ovs.forget_endpoint(vif.host_ifname)
        except Exception as exc:  # noqa: BLE001 - then it is simply not recycled
            LOG.warning("pool port %s: cannot clear its endpoint in OVS: %s", port.id, exc)
            return False
        fresh = PortInfo(id=port.id, network_id=port.network_id, mac=port.mac,
                         addresses=dict(port.addresses), vif_type=port.vif_type,
                         bridge=port.bridge, security_groups=list(port.security_groups))
        with self._lock:
            waiters = self._waiters.get(net.neutron_id, [])
            if waiters:
                waiter = waiters.pop(0)
                waiter.port = fresh
                waiter.event.set()
            else:
                self._ready.setdefault(net.neutron_id, collections.deque()).append(fresh)
        return True

    def held(self) -> set[str]:
        """Ids of the ports ready in the pool."""
        with self._lock:
            return {port.id for ready in self._ready.values() for port in ready}

    def size_of(self, net: NetworkInfo) -> int:
        return net.pool_size(self.default_size)

    def refill_soon(self, net: NetworkInfo) -> None:
        if self.size_of(net) <= 0:
            return
        with self._lock:
            self._wanted[net.neutron_id] = net
        self._wake.set()

    # -- filling -----------------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            self._wake.wait()
            self._wake.clear()
            with self._lock:
                wanted = list(self._wanted.values())
                self._wanted.clear()
            for net in wanted:
                try:
                    self._fill(net)
                except Exception as exc:  # noqa: BLE001 - the next take retries
                    LOG.warning("network %s: pool refill failed: %s", net.neutron_id, exc)

    def _net_lock(self, network_id: str) -> threading.Lock:
        with self._lock:
            return self._net_locks.setdefault(network_id, threading.Lock())

    def _fill(self, net: NetworkInfo) -> None:
        try:
            with self._net_lock(net.neutron_id):
                self._fill_locked(net)
        except Exception:
            with self._lock:  # nobody waits for a fill that failed
                for waiter in self._waiters.pop(net.neutron_id, []):
                    waiter.event.set()
            raise

    def _fill_locked(self, net: NetworkInfo) -> None:
        """Called with the network's lock held, so a drain (same lock) never runs
        in the middle: what is created here is either handed out or drained later."""
        with self._lock:
            if net.neutron_id in self._drained:
                return
            have = len(self._ready.get(net.neutron_id, ()))
            waiting = len(self._waiters.get(net.neutron_id, ()))
            self._known.add(net.neutron_id)
        missing = self._batch(net, have, waiting)
        if missing <= 0 or not net.subnets:
            return
        fixed_ips = [{"subnet_id": s.id} for s in net.subnets]
        created = self.ctx.neutron.create_ports([{
            "network_id": net.neutron_id, "fixed_ips": fixed_ips,
            "device_owner": marks.POOL_DEVICE_OWNER, "binding_host_id": self.ctx.host,
            "name": f"{marks.PORT_NAME_PREFIX}pool",
        } for _ in range(missing)])
        ready = [self._plug(net, port) for port in created]
        with self._lock:
            waiters = self._waiters.get(net.neutron_id, [])
            while ready and waiters:
                waiter = waiters.pop(0)
                waiter.port = ready.pop(0)
                waiter.event.set()
            self._ready.setdefault(net.neutron_id, collections.deque()).extend(ready)
            if waiters:
                self._wanted[net.neutron_id] = net
                self._wake.set()

    def _batch(self, net: NetworkInfo, have: int, waiting: int) -> int:
        """Enough to top the pool up to its size and serve who waits.

        Bigger batches were tried for bursts: Neutron's cost per port in a bulk
        request stays ~0.5-1 s under load, so they only made waiters wait longer."""
        return min(self.size_of(net) - have + waiting, MAX_BULK)

    def _plug(self, net: NetworkInfo, port: object) -> PortInfo:
        from kuryr.libnetwork import ipam

        info = ipam.port_info(port)
        vif = VIF(port_id=info.id, mac=info.mac, vif_type=info.vif_type,
                  bridge=info.bridge or self.ctx.conf.binding.ovs_bridge, mtu=net.mtu)
        netlink.create_veth(vif)
        if vif.vif_type == "bridge":
            netlink.attach_to_linux_bridge(vif.host_ifname, vif.bridge)
        else:
            self.ctx.ovs.plug(vif)
        return info

    def _discard(self, port: PortInfo) -> None:
        if self.ctx.background is not None:
            # A recycled port may still have its return-to-pool PUT queued.
            self.ctx.background.cancel(port.id)
        vif = VIF(port_id=port.id, mac=port.mac)
        try:
            self.ctx.ovs.unplug(vif.host_ifname)
        except Exception as exc:  # noqa: BLE001
            LOG.warning("pool port %s: cannot unplug: %s", port.id, exc)
        netlink.delete_link(vif.host_ifname)
        self.ctx.neutron.delete_port(port.id)

    # -- network removal and restarts ---------------------------------------------------------
    def drain(self, net: NetworkInfo) -> None:
        """Delete the network's unused pooled ports (before the network itself)."""
        with self._lock:
            self._drained.add(net.neutron_id)
        with self._net_lock(net.neutron_id):
            self._drain_locked(net)

    def _drain_locked(self, net: NetworkInfo) -> None:
        with self._lock:
            ports = list(self._ready.pop(net.neutron_id, ()))
            self._wanted.pop(net.neutron_id, None)
            known = net.neutron_id in self._known
        for port in ports:
            self._discard(port)
        if known or self.size_of(net) <= 0:
            return
        # Pooled ports this process may not know (made before a restart).
        for port in self.ctx.neutron.ports(network_id=net.neutron_id,
                                           device_owner=marks.POOL_DEVICE_OWNER,
                                           binding_host_id=self.ctx.host):
            if netlink.link_exists(VIF(port_id=port.id, mac=port.mac_address).container_ifname) \
                    or not netlink.link_exists(VIF(port_id=port.id,
                                                   mac=port.mac_address).host_ifname):
                self._discard(_minimal(port))

    def restore(self) -> int:
        """Take back the free pooled ports of this host after a restart (1 GET)."""
        from kuryr.libnetwork import ipam

        free = 0
        ports = self.ctx.neutron.ports(device_owner=marks.POOL_DEVICE_OWNER,
                                       binding_host_id=self.ctx.host)
        with self._lock:
            self._known.update(p.network_id for p in ports)
        for port in ports:
            vif = VIF(port_id=port.id, mac=port.mac_address)
            if not netlink.link_exists(vif.host_ifname):
                self._discard(_minimal(port))  # its veth is gone (host reboot, crash)
            elif netlink.link_exists(vif.container_ifname):
                with self._lock:
                    self._ready.setdefault(port.network_id, collections.deque()).append(
                        ipam.port_info(port))
                free += 1
            # else: in use by a container; found through its OVS interface.
        return free


def _minimal(port: object) -> PortInfo:
    return PortInfo(id=port.id, network_id=port.network_id, mac=port.mac_address,
                    addresses={})

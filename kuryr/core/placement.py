"""Where this Kuryr's ports live, and what ties a Neutron port to it.

On a host that is itself a Neutron/OVN chassis (``port_driver = veth``) Kuryr
binds each port it makes to the host (binding:host_id) and knows its ports by
that binding.  Inside a VM (nested) Kuryr may not bind anything (a VM's
credentials have no binding rights); its ports reach the VM through the VM's
own port, and are known by a tag naming that port, given in the same POST
that makes them (or the PUT right after it, where Neutron takes no tags in a
port's POST), so a crash leaves no port nobody recognises:

=================  =====================================  ==========================
Placement          after a port is made / before delete   how Kuryr finds its ports
=================  =====================================  ==========================
OnHost             nothing                                binding:host_id = host
TrunkSubports      sub-port of the VM port's trunk with   tag kuryr.vm:<VM port id>
                   a VLAN id of its own / removed
AddressPairs       its addresses join the VM port's       tag kuryr.vm:<VM port id>
                   allowed_address_pairs / leave them
=================  =====================================  ==========================

The nested placements write only to the VM's trunk and the VM's port, both
the VM owner's: what a non-admin user of the VM's project may do.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from kuryr import errors
from kuryr.neutron import marks
from kuryr.neutron.client import Neutron
from kuryr.neutron.types import Port, SubPort, Trunk

LOG = logging.getLogger(__name__)

VLAN_IDS = range(1, 4095)  # 802.1Q: 0 and 4095 are reserved
CAS_ATTEMPTS = 20  # compare-and-swap rounds of one address-pairs change before giving up


class Placement(Protocol):
    host: str  # this Kuryr's name for where it runs ([DEFAULT] host)

    @property
    def binding_host_id(self) -> str | None:
        """What ports Kuryr makes or takes are bound to; None: not sent."""

    @property
    def tags(self) -> tuple[str, ...]:
        """Tags every port Kuryr makes carries from its POST on (and keeps)."""

    def port_filters(self) -> dict[str, str]:
        """Neutron list filters that select this Kuryr's ports (and maybe more)."""

    def holds(self, port: Port) -> bool:
        """``port`` is placed here: bound to this host / on this VM."""

    def attach(self, ports: Sequence[Port]) -> None:
        """Connect ports just made (or adopted) to where containers run; on failure
        nothing is left attached and the caller deletes the ports."""

    def detach(self, ports: Sequence[Port]) -> None:
        """Undo attach before the ports are deleted or given back; ports that are
        not attached (any more) are fine."""

    def vlan_of(self, port_id: str) -> int | None:
        """The VLAN id the port's frames carry on the VM's NIC (TrunkSubports)."""


class OnHost:
    """A chassis: ports bound to this host, nothing else to attach."""

    def __init__(self, host: str) -> None:
        self.host = host

    @property
    def binding_host_id(self) -> str:
        return self.host

    @property
    def tags(self) -> tuple[str, ...]:
        return ()

    def port_filters(self) -> dict[str, str]:
        return {"binding_host_id": self.host}

    def holds(self, port: Port) -> bool:
        return port.binding_host_id == self.host

    def attach(self, ports: Sequence[Port]) -> None:
        """Binding them (in their POST) was all."""

    def detach(self, ports: Sequence[Port]) -> None:
        """Deleting them is all."""

    def vlan_of(self, port_id: str) -> None:
        return None


class _OnVM:
    """What both nested placements share: the VM's port and the tag naming it."""

    def __init__(self, host: str, vm_port: Port) -> None:
        self.host = host
        self.vm_port = vm_port
        self._tag = marks.vm_tag(vm_port.id)

    @property
    def binding_host_id(self) -> None:
        return None  # Neutron binds what reaches a VM through the VM's port

    @property
    def tags(self) -> tuple[str, ...]:
        return (self._tag,)

    def port_filters(self) -> dict[str, str]:
        return {"tags": self._tag}

    def holds(self, port: Port) -> bool:
        return self._tag in port.tags


class TrunkSubports(_OnVM):
    """nested-vlan: each container port is a sub-port of the VM port's trunk.

    VLAN ids are handed out here, the lowest free first (so an id is reused
    after its sub-port goes), and only in memory under a lock that is never
    held across a Neutron request; Neutron refuses a taken id (someone else
    added a sub-port meanwhile), and then the trunk is read again.  The ids
    in use come from the trunk at start-up: a restart loses nothing."""

    def __init__(self, host: str, vm_port: Port, trunk: Trunk, neutron: Neutron) -> None:
        super().__init__(host, vm_port)
        self.trunk_id = trunk.id
        self._neutron = neutron
        self._lock = threading.Lock()
        self._vlans: dict[str, int] = {}  # port id -> VLAN id, as on the trunk or being added
        self._learn(trunk)

    def _learn(self, trunk: Trunk) -> None:
        with self._lock:
            for sub in trunk.sub_ports:
                self._vlans[sub.port_id] = sub.segmentation_id

    def vlan_of(self, port_id: str) -> int | None:
        with self._lock:
            return self._vlans.get(port_id)

    def attach(self, ports: Sequence[Port]) -> None:
        """1 PUT for all ports (2 and a GET when another writer took an id), then
        1 PUT each: Neutron's trunk driver rewrites a sub-port's device_owner to
        trunk:subport, and Kuryr's owners say what a port is doing (ready in the
        pool, reserved, serving a container) after a restart."""
        for last in (False, True):
            subs = self._reserve([p.id for p in ports])
            try:
                self._neutron.add_subports(self.trunk_id, subs)
                break
            except errors.Conflict:
                self._release([s.port_id for s in subs])
                if last:
                    raise
                # A sub-port Kuryr did not add holds an id: learn the trunk again.
                self._learn(self._neutron.get_trunk(self.trunk_id))
            except Exception:
                self._release([s.port_id for s in subs])
                raise
        for port in ports:
            self._put_owner_back(port)

    def _put_owner_back(self, port: Port) -> None:
        """The sub-port is on the trunk whatever happens here: a failure only
        leaves Neutron's trunk:subport as its owner (logged)."""
        try:
            self._neutron.update_port(port.id, device_owner=port.device_owner)
        except errors.KuryrError as exc:
            LOG.warning("sub-port %s keeps device_owner trunk:subport: %s", port.id, exc)

    def detach(self, ports: Sequence[Port]) -> None:
        """1 PUT.  The VLAN ids are free again only once Neutron let go of them."""
        ids = [p.id for p in ports if self.vlan_of(p.id) is not None]
        if not ids:
            return
        try:
            self._neutron.remove_subports(self.trunk_id, ids)
        except errors.NotFound:
            # One of them is no sub-port any more (removed by an earlier try, or
            # by hand): remove the others one by one.
            for port_id in ids:
                with contextlib.suppress(errors.NotFound):
                    self._neutron.remove_subports(self.trunk_id, [port_id])
        self._release(ids)

    def _reserve(self, port_ids: Sequence[str]) -> list[SubPort]:
        with self._lock:
            taken = set(self._vlans.values())
            free = (v for v in VLAN_IDS if v not in taken)
            subs: list[SubPort] = []
            for port_id in port_ids:
                vlan = next(free, None)
                if vlan is None:
                    for sub in subs:
                        del self._vlans[sub.port_id]
                    raise errors.Conflict(f"trunk {self.trunk_id} has no free VLAN id left "
                                          f"for {len(port_ids)} more sub-ports")
                self._vlans[port_id] = vlan
                subs.append(SubPort(port_id=port_id, segmentation_id=vlan))
            return subs

    def _release(self, port_ids: Sequence[str]) -> None:
        with self._lock:
            for port_id in port_ids:
                self._vlans.pop(port_id, None)


@dataclass
class _PairChange:
    """One caller's change to the VM port's pairs, and its outcome."""

    adds: frozenset[str]
    removes: frozenset[str]
    done: threading.Event = field(default_factory=threading.Event)
    error: BaseException | None = None

    def apply(self, pairs: set[str]) -> set[str]:
        return (pairs | self.adds) - self.removes


class AddressPairs(_OnVM):
    """nested-macvlan: a container port only holds its addresses; the VM's port
    may send from them (allowed_address_pairs, with the VM port's own MAC:
    Neutron 29 with OVN refuses any other MAC than a VRRP one in a pair).

    The pairs are one list on one port, rewritten whole by each PUT, so:
    - this Kuryr writes it one PUT at a time: concurrent callers' changes are
      combined into the next PUT by whichever caller is writing (no thread of
      its own, no lock held across the request).  Neutron 29's If-Match alone
      does not serialize writers: of 10 concurrent PUTs with the same
      revision_number, 8 succeeded here, each losing the others' pairs;
    - each PUT is a compare-and-swap on revision_number, so a change made by
      someone else (a user editing the pairs) between Kuryr's read and its
      write is read again, not overwritten."""

    def __init__(self, host: str, vm_port: Port, neutron: Neutron) -> None:
        super().__init__(host, vm_port)
        self._neutron = neutron
        self._lock = threading.Lock()
        self._latest = vm_port  # the VM port as last read or written
        self._pending: list[_PairChange] = []
        self._writing = False

    def vlan_of(self, port_id: str) -> None:
        return None

    def attach(self, ports: Sequence[Port]) -> None:
        self._submit(_PairChange(adds=frozenset(f.ip_address for p in ports
                                                for f in p.fixed_ips), removes=frozenset()))

    def detach(self, ports: Sequence[Port]) -> None:
        self._submit(_PairChange(adds=frozenset(), removes=frozenset(
            f.ip_address for p in ports for f in p.fixed_ips)))

    def _submit(self, change: _PairChange) -> None:
        """Queue ``change``; the first caller to find no writer writes every
        queued change (its own and those arriving meanwhile) until none is left."""
        with self._lock:
            self._pending.append(change)
            lead = not self._writing
            self._writing = True
        if lead:
            self._write_pending()
        change.done.wait()
        if change.error is not None:
            raise change.error

    def _write_pending(self) -> None:
        while True:
            with self._lock:
                batch, self._pending = self._pending, []
                if not batch:
                    self._writing = False
                    return
            try:
                self._write(batch)
            except Exception as exc:  # noqa: BLE001 - handed to every caller of the batch
                for change in batch:
                    change.error = exc
            for change in batch:
                change.done.set()

    def _write(self, batch: list[_PairChange]) -> None:
        """1 PUT for the whole batch, plus 1 GET and 1 PUT per outside writer that
        came in between."""
        vm, fresh = self._latest, False
        for _ in range(CAS_ATTEMPTS):
            current = {ip for ip, mac in vm.allowed_address_pairs
                       if not mac or mac == vm.mac_address}
            others = [(ip, mac) for ip, mac in vm.allowed_address_pairs
                      if mac and mac != vm.mac_address]  # a user's VRRP pairs: kept as they are
            wanted = set(current)
            for change in batch:
                wanted = change.apply(wanted)
            if wanted == current:
                if fresh:
                    return
                # "Nothing to do" is only true of the port as it is now: the
                # remembered copy may be older than someone else's change.
                vm, fresh = self._neutron.get_port(vm.id), True
                continue
            try:
                vm = self._neutron.update_port(
                    vm.id, allowed_address_pairs=[*others, *((ip, "") for ip in sorted(wanted))],
                    if_revision=vm.revision_number)
                self._latest = vm  # only the writer of the moment touches it
                return
            except errors.StaleRevision:
                vm, fresh = self._neutron.get_port(vm.id), True
                self._latest = vm
        raise errors.BackendUnavailable(
            f"VM port {self.vm_port.id}: could not change its allowed address pairs: it "
            f"changed under every one of {CAS_ATTEMPTS} attempts")


class NestedSetupError(Exception):
    """Kuryr cannot run nested here; the message says what to fix.  Raised at
    start-up, never at a container's start."""


def find_vm_port(neutron: Neutron, parent_port: str, link_mac: str | None,
                 link_iface: str) -> Port:
    """The VM's own port: [binding] parent_port, else the one with the MAC of the
    VM's interface (1-2 GETs)."""
    if parent_port:
        try:
            return neutron.find_port(parent_port)
        except (errors.NotFound, errors.Conflict) as exc:
            raise NestedSetupError(f"[binding] parent_port: {exc}") from exc
    if not link_mac:
        raise NestedSetupError(f"[binding] link_iface {link_iface!r} is no interface of this "
                               "VM: name the VM's interface on its Neutron port (e.g. eth0)")
    found = neutron.ports(mac_address=link_mac)
    if len(found) != 1:
        which = "no Neutron port has" if not found else f"{len(found)} Neutron ports have"
        raise NestedSetupError(
            f"{which} the MAC {link_mac} of [binding] link_iface {link_iface}: name the VM's "
            "port in [binding] parent_port")
    return found[0]


# How long a starting nested Kuryr waits for the VM's port to be ACTIVE again.
# Neutron's status of a VM port lags OVN's: after a burst of address-pair
# changes OVN re-bound the port within a second, while Neutron showed it DOWN
# 30 s later for 5 s (seen here, and a restarted Kuryr exited on it).
VM_PORT_ACTIVE_WAIT = 45.0


def vm_port_once_active(find: Callable[[], Port], timeout: float = VM_PORT_ACTIVE_WAIT,
                        sleep: Callable[[float], None] = time.sleep,
                        clock: Callable[[], float] = time.monotonic) -> Port:
    """The VM's port (``find``: 1-2 GETs), read again every 2 s until it is
    ACTIVE or ``timeout`` passed; the last one read either way (nested_placement
    names what is wrong)."""
    deadline = clock() + timeout
    port = find()
    while port.status != "ACTIVE" and clock() < deadline:
        LOG.warning("the VM's port %s is %s: waiting up to %.0f s for it to be ACTIVE",
                    port.id, port.status or "not ACTIVE", max(0.0, deadline - clock()))
        sleep(2.0)
        port = find()
    return port


def nested_placement(driver: str, host: str, neutron: Neutron, vm_port: Port) -> Placement:
    """The placement of a nested driver, after checking what every container start
    will need: the VM's port up, and (nested-vlan) its trunk (1 GET)."""
    if vm_port.status != "ACTIVE":
        raise NestedSetupError(
            f"the VM's port {vm_port.id} is {vm_port.status or 'not ACTIVE'}: containers "
            "reach the network through it, so Kuryr waits for the VM to be up")
    if driver == "nested-macvlan":
        return AddressPairs(host, vm_port, neutron)
    trunk = neutron.trunk_of(vm_port.id)
    if trunk is None:
        raise NestedSetupError(
            f"port_driver = nested-vlan needs a trunk on the VM's port {vm_port.id}: "
            f"`openstack network trunk create --parent-port {vm_port.id} <name>` (a trunk "
            "is made before the VM boots on it, in most clouds)")
    return TrunkSubports(host, vm_port, trunk, neutron)

"""A Neutron port's life, from "reserve an address" to "gone", for every front end.

    reserve  (Docker RequestAddress)   a ready pooled port, a new port, or a
                                       user's pre-created one; a lease with a
                                       generation is handed out
    attach   (CreateEndpoint)          the lease serves an endpoint: addresses
                                       fitted, endpoint recorded, veth plugged
    join     (Join)                    plugged (again if lost) and wired
    detach   (DeleteEndpoint)          back to the pool, deleted, or given back
    release  (ReleaseAddress)          Docker lets go of an address; only a lease
                                       that is still current may touch its port

Whose port it is (ownership.py) is decided here and only here.  Neutron
requests on a container's path: none with a ready pooled port (the endpoint
is recorded in the background); one POST without.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import ipaddress
import json
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass

from kuryr import errors
from kuryr.core import ownership
from kuryr.core.background import Background
from kuryr.core.binder import Binder, vif_of
from kuryr.core.model import Lease, NetworkRecord
from kuryr.core.naming import Naming
from kuryr.core.placement import OnHost, Placement
from kuryr.core.pool import PortPool
from kuryr.core.state import State
from kuryr.neutron import marks
from kuryr.neutron.client import Neutron
from kuryr.neutron.types import IPV4, IPV6, NewPort, Port, Subnet
from kuryr.publish import spec

LOG = logging.getLogger(__name__)
# dockerd asks for an endpoint's IPv6 address milliseconds after its IPv4 one; a
# lease still waiting this long was dropped (a refused --ip6 sends no release).
ABANDONED_AFTER = 30.0


@dataclass(frozen=True)
class Settings:
    host: str
    default_bridge: str
    owners: marks.Owners  # the front end's device owners: no other port is ever used
    dns_enabled: bool = False
    wait_for_refill: float = 0.0
    plug_timeout: float = 30.0
    plug_is_fatal: bool = True
    security_group_ids: tuple[str, ...] = ()  # of every port made; empty: the default
    # Where the ports live (bound to ``host``, or nested in a VM); OnHost(host) if None.
    placement: Placement | None = None

    @property
    def where(self) -> Placement:
        return self.placement or OnHost(self.host)


@dataclass(frozen=True)
class EndpointRecord:
    """How a front end records in Neutron that a port serves one of its endpoints,
    when that is not Docker's way (device_id = endpoint id, named after it).
    Kept on the port's interface too (binding's plug ``record``), so a record
    lost with the process is written again after a restart."""

    device_id: str
    name: str
    tags: tuple[str, ...] = ()  # replace the port's tags; removed when it returns to a pool

    def as_local(self) -> dict[str, str]:
        return {"device-id": self.device_id, "name": self.name,
                "tags": json.dumps(list(self.tags))}

    @classmethod
    def from_local(cls, values: Mapping[str, str]) -> EndpointRecord | None:
        """None when nothing (or something unreadable) was kept."""
        try:
            tags = json.loads(values.get("tags", "[]"))
            return cls(device_id=values["device-id"], name=values.get("name", ""),
                       tags=tuple(str(t) for t in tags))
        except (KeyError, ValueError, TypeError):
            return None


@dataclass(frozen=True)
class PortExtras:
    """What a front end sets on an endpoint's port beyond the endpoint itself."""

    security_group_ids: tuple[str, ...] = ()  # added to the port's own
    description: str | None = None
    expose_group: str | None = None  # made for this endpoint: deleted with the port
    mac_address: str = ""  # the user's MAC (docker run --mac-address)


def _version(address: str) -> int:
    return ipaddress.ip_address(address).version


def _fixed_ip(net: NetworkRecord, address: str) -> dict[str, str]:
    subnet = net.subnet_of(address)
    if subnet is None:
        raise errors.InvalidInput(f"address {address} is in no subnet of Neutron "
                                  f"network {net.neutron_id}")
    return {"subnet_id": subnet.id, "ip_address": address}


def _address_in(port: Port, subnet_id: str) -> str | None:
    return next((f.ip_address for f in port.fixed_ips if f.subnet_id == subnet_id), None)


class PortLifecycle:
    def __init__(self, neutron: Neutron, binder: Binder, pool: PortPool,
                 background: Background, state: State, settings: Settings,
                 naming: Naming) -> None:
        self.neutron = neutron
        self.binder = binder
        self.pool = pool
        self.background = background
        self.state = state
        self.settings = settings
        self.naming = naming
        # Host-side cleanup of containers that are gone (OVS + veth removal): one
        # thread of its own, so it never waits behind Neutron writes.
        self._unplugger = concurrent.futures.ThreadPoolExecutor(
            1, thread_name_prefix="unplug")

    def stop(self) -> None:
        self._unplugger.shutdown(wait=True)

    # -- reserve -------------------------------------------------------------------------
    def reserve(self, net: NetworkRecord, subnet: Subnet, wanted: str | None = None,
                name: str = "", mac: str = "") -> str:
        """An address of ``subnet`` for a container that is about to be created."""
        if net.pairs_families:
            for lease in self.state.abandoned_v6_partners(net.neutron_id, ABANDONED_AFTER):
                LOG.info("port %s: its container's start was abandoned after the IPv4 "
                         "address; freeing it", lease.port.id)
                self._free_unattached(net, lease)
        if net.pairs_families and subnet.ip_version == IPV6:
            partner = self._reserve_partner(net, subnet, wanted)
            if partner is not None:
                return partner
        port, from_pool = self._ready_or_new_port(net, subnet, wanted, name, mac)
        lease = self.state.hand_out(port, net.neutron_id, from_pool)
        address = wanted or _address_in(port, subnet.id)
        if address is None:  # cannot happen: the port was made on this subnet
            raise errors.BackendUnavailable(f"port {port.id} has no address on {subnet.cidr}")
        self.state.hold(lease, address)
        if net.pairs_families and subnet.ip_version == IPV4:
            self.state.await_v6(lease)
        return address

    def _reserve_partner(self, net: NetworkRecord, subnet: Subnet,
                         wanted: str | None) -> str | None:
        """The IPv6 half of a dual-stack request: the IPv6 address of a port whose
        IPv4 address was just handed out.  Nothing blocks: if concurrent starts
        interleave and a container gets another one's IPv6 address, attach()
        moves the addresses to the right ports."""
        lease = self.state.next_awaiting_v6(net.neutron_id)
        if lease is None:
            return None
        address = wanted or _address_in(lease.port, subnet.id)
        if address is None:
            return None
        self.state.hold(lease, address)
        return address

    def _ready_or_new_port(self, net: NetworkRecord, subnet: Subnet, wanted: str | None,
                           name: str, mac: str) -> tuple[Port, bool]:
        if wanted is None and not mac:
            pooled = self.pool.take(net, wait=self.settings.wait_for_refill)
            if pooled is not None:
                return pooled, True
        fixed: list[dict[str, str]] = [
            {"subnet_id": subnet.id, **({"ip_address": wanted} if wanted else {})}]
        if net.pairs_families:
            # Take the other family's address in the same request, so Docker's
            # second RequestAddress costs nothing.
            fixed += [{"subnet_id": s.id} for s in net.subnets
                      if s.ip_version != subnet.ip_version]
        return self._create_or_adopt(net, fixed, wanted, name, mac), False

    def _create_or_adopt(self, net: NetworkRecord, fixed_ips: list[dict[str, str]],
                         wanted: str | None, name: str, mac: str,
                         endpoint_id: str = "") -> Port:
        placement = self.settings.where
        new = NewPort(network_id=net.neutron_id, fixed_ips=tuple(fixed_ips),
                      device_owner=self.settings.owners.unbound,
                      binding_host_id=placement.binding_host_id, tags=placement.tags,
                      name=marks.PORT_NAME_PREFIX + (name or endpoint_id[:12] or "docker"),
                      mac_address=mac, security_group_ids=self.settings.security_group_ids,
                      dns_name=name if name and self.settings.dns_enabled else "")
        try:
            port = self.neutron.create_port(new)
        except errors.Conflict as exc:
            if wanted is None:
                raise
            return self._take_holder(net, wanted, mac, endpoint_id, exc)
        self._attach_or_delete(port)
        return port

    def _attach_or_delete(self, port: Port) -> None:
        """Nested: the new port joins the VM (a sub-port, or its addresses in the
        VM port's pairs; 1 PUT); a port that cannot is deleted, not leaked."""
        try:
            self.settings.where.attach([port])
        except Exception:
            self.neutron.delete_port(port.id)
            raise

    def _take_holder(self, net: NetworkRecord, address: str, mac: str, endpoint_id: str,
                     conflict: errors.Conflict) -> Port:
        """``address`` is taken in Neutron: use its port only if ownership allows."""
        holders = self.neutron.ports(network_id=net.neutron_id, ip_address=address)
        if not holders:
            raise errors.Conflict(f"address {address} is already in use") from conflict
        holder = holders[0]
        try:
            claim = ownership.claim(holder, self.settings.owners, self.settings.where,
                                    endpoint_id)
        except errors.Conflict as exc:
            raise errors.Conflict(f"address {address} is already in use by {exc}") \
                from conflict
        if claim is ownership.Claim.OURS:
            return self._take_our_port(net, holder, address, endpoint_id)
        return self._adopt_precreated(holder, mac)

    def _take_our_port(self, net: NetworkRecord, port: Port, address: str,
                       endpoint_id: str) -> Port:
        """A port this host's Kuryr made holds the address: usable only if no
        request or container of this process (or, after a restart, of OVS's
        record) uses it."""
        if port.device_id == endpoint_id and endpoint_id:
            return port
        live = self.state.live_lease(port.id)
        if live is not None:
            user = f"endpoint {live.endpoint_id[:12]}" if live.endpoint_id \
                else "a container being created"
            raise errors.Conflict(f"address {address} is already in use by {user} "
                                  f"(port {port.id})")
        if port.device_owner == self.settings.owners.pool:
            self.pool.claim(net.neutron_id, port.id)
        recorded = self.binder.endpoint_of(vif_of(port, net.mtu, self.settings.default_bridge))
        if recorded and recorded != endpoint_id:
            raise errors.Conflict(f"address {address} is used by endpoint {recorded[:12]} "
                                  f"(port {port.id})")
        return port

    def _adopt_precreated(self, holder: Port, mac: str) -> Port:
        """A port a user made for Kuryr (no owner): tag it first, so a crash never
        leaves a user's port that looks like Kuryr's own (the garbage collector
        deletes those), then bind it only if nobody changed it meanwhile."""
        placement = self.settings.where
        tags = sorted({*holder.tags, marks.PORT_EXISTING_TAG, *placement.tags})
        self.neutron.set_port_tags(holder.id, tags)
        try:
            bound = self.neutron.update_port(
                holder.id, binding_host_id=placement.binding_host_id,
                device_owner=self.settings.owners.unbound,
                mac_address=mac if mac and mac != holder.mac_address else None,
                # The tag update above is one revision.
                if_revision=holder.revision_number + 1)
            placement.attach([bound])
        except errors.KuryrError as exc:
            self.neutron.set_port_tags(holder.id, list(holder.tags))
            raise errors.Conflict(f"pre-created {ownership.describe(holder)} changed while "
                                  f"Kuryr was taking it: {exc}") from exc
        LOG.info("adopted pre-created port %s", holder.id)
        return dataclasses.replace(bound, tags=tuple(tags))

    # -- attach ----------------------------------------------------------------------------
    def attach(self, net: NetworkRecord, endpoint_id: str, addresses: list[str],
               extras: PortExtras | None = None) -> Lease:
        """The endpoint's port: the lease its addresses came from (or, with another
        IPAM driver, a port made or adopted now), fitted, recorded and plugged."""
        known = self.state.endpoint(endpoint_id)
        if known is not None:
            return known  # Docker replays
        lease = next((found for a in addresses
                      if (found := self.state.unattached_lease(net.neutron_id, a))), None)
        if lease is None:
            lease = self._lease_for_other_ipam(net, endpoint_id, addresses, extras)
        self.state.stop_awaiting_v6(lease)
        if not self.state.attach(lease, endpoint_id):
            return self.state.endpoint(endpoint_id) or lease
        try:
            self._fit_addresses(net, lease, addresses)
            self._record_endpoint(net, lease, endpoint_id, extras or PortExtras())
            self._plug(net, lease, endpoint_id)
        except Exception:
            self.state.unattach(lease)
            if not lease.held:  # nobody will release it: Docker's own IPAM, or none
                self._dispose(net, lease)
            raise
        return lease

    def attach_ready(self, net: NetworkRecord, subnet: Subnet, endpoint_id: str,
                     record: EndpointRecord) -> Lease:
        """For a front end that asks for no address of its own (CNI): a ready pooled
        port of ``subnet`` (no Neutron request), else a new one, attached to
        ``endpoint_id``, recorded in the background as ``record`` and plugged.
        The endpoint's existing lease when it has one (a repeated request)."""
        known = self.state.endpoint(endpoint_id)
        if known is not None:
            return known
        port, from_pool = self._ready_or_new_port(net, subnet, None, "", "")
        lease = self.state.hand_out(port, net.neutron_id, from_pool)
        if not self.state.attach(lease, endpoint_id):  # a concurrent request won
            self._free_unattached(net, lease)
            return self.state.endpoint(endpoint_id) or lease
        lease.record_tags = record.tags
        try:
            self._record_endpoint_later(port, endpoint_id, net.neutron_id, lease, record)
            self._plug(net, lease, endpoint_id, record)
        except Exception:
            self.state.unattach(lease)
            self._free_unattached(net, lease)
            raise
        return lease

    def _lease_for_other_ipam(self, net: NetworkRecord, endpoint_id: str,
                              addresses: list[str], extras: PortExtras | None) -> Lease:
        """Docker's own IPAM chose the addresses (or Kuryr restarted since it
        handed them out): make the port, or take the one holding them if
        ownership allows."""
        mac = extras.mac_address if extras else ""
        fixed = [_fixed_ip(net, a) for a in addresses]
        port = self._create_or_adopt(net, fixed, addresses[0] if addresses else None, "",
                                     mac, endpoint_id)
        return self.state.hand_out(port, net.neutron_id)

    def _fit_addresses(self, net: NetworkRecord, lease: Lease, addresses: list[str]) -> None:
        """Make the port hold exactly the addresses Docker gave the endpoint.

        Only after interleaved dual-stack starts (or --ip6 on a paired network)
        do they differ: take each missing address from the in-flight port that
        holds it (a PUT each), then set the port's own (one PUT)."""
        missing = [a for a in addresses if a not in lease.port.addresses]
        if not missing:
            return
        for address in missing:
            other = self.state.in_flight_lease_of_port(net.neutron_id, address)
            if other is not None and other is not lease:
                keep = [{"subnet_id": s, "ip_address": ip}
                        for ip, s in other.port.addresses.items() if ip != address]
                other.port = self.neutron.update_port(other.port.id, fixed_ips=keep)
        families = {_version(a) for a in missing}
        fixed = [{"subnet_id": s, "ip_address": ip} for ip, s in lease.port.addresses.items()
                 if _version(ip) not in families]
        fixed += [_fixed_ip(net, a) for a in missing]
        lease.port = self.neutron.update_port(lease.port.id, fixed_ips=fixed)
        LOG.info("port %s re-paired to %s", lease.port.id, ", ".join(addresses))

    def _record_endpoint(self, net: NetworkRecord, lease: Lease, endpoint_id: str,
                         extras: PortExtras) -> None:
        port = lease.port
        mac = extras.mac_address.lower()
        if mac == port.mac_address.lower():
            mac = ""
        if not (extras.security_group_ids or extras.description is not None or mac):
            lease.plain = not lease.adopted
            # The port is bound to this host since it was reserved: recording the
            # endpoint changes nothing about its packets, so the container does not wait.
            self._record_endpoint_later(port, endpoint_id, net.neutron_id, lease)
            return
        # Security groups must be in place before the container starts.
        lease.plain = False
        lease.expose_group = extras.expose_group
        groups = [*port.security_group_ids,
                  *(g for g in extras.security_group_ids if g not in port.security_group_ids)]
        old_vif = vif_of(port, net.mtu, self.settings.default_bridge)
        lease.port = self.neutron.update_port(
            port.id, device_id=endpoint_id, device_owner=self.settings.owners.container,
            binding_host_id=self.settings.where.binding_host_id,
            name=_name_for(port, endpoint_id, lease.adopted),
            security_group_ids=groups if extras.security_group_ids else None,
            description=extras.description, mac_address=mac or None)
        if mac:
            self.binder.unplug(old_vif)  # a pooled veth has the old MAC

    def _record_endpoint_later(self, port: Port, endpoint_id: str, network_id: str,
                               lease: Lease | None = None,
                               given: EndpointRecord | None = None) -> None:
        """device_id and the rest in one background PUT; with Neutron DNS, once the
        container's name is known (or known not to come), so dns_name rides along.
        ``lease``: the endpoint's, whose write is dropped if the endpoint went
        meanwhile (its port may serve another container by then).  ``given``:
        the front end's own record (CNI: the pod), written as is (no DNS)."""
        host, owner = self.settings.where.binding_host_id, self.settings.owners.container
        record_as = given or EndpointRecord(
            device_id=endpoint_id,
            name=_name_for(port, endpoint_id, lease is not None and lease.adopted) or "")

        def record(dns_label: str) -> None:
            def write() -> None:
                if lease is not None and self.state.endpoint(endpoint_id) is not lease:
                    return  # gone before its name came: nothing to record
                self.neutron.update_port(port.id, device_id=record_as.device_id,
                                         device_owner=owner, binding_host_id=host,
                                         name=record_as.name or None,
                                         dns_name=dns_label or None)
                if record_as.tags:
                    self.neutron.set_port_tags(
                        port.id, [*self.settings.where.tags, *record_as.tags])
            self.background.submit(port.id, f"record endpoint {endpoint_id[:12]} on port "
                                   f"{port.id}", write, group=network_id)

        if given is not None or lease is None or lease.adopted \
                or not self.settings.dns_enabled:
            record("")  # a user's port keeps its own dns_name
        else:
            self.naming.when_named(endpoint_id, record)

    def name_endpoint(self, endpoint_id: str, dns_label: str) -> None:
        """The container was renamed (or named after its endpoint was recorded):
        its port's dns_name follows (1 background PUT)."""
        lease = self.state.endpoint(endpoint_id)
        if lease is None or lease.adopted or not self.settings.dns_enabled:
            return
        port_id = lease.port.id

        def write() -> None:
            if self.state.endpoint(endpoint_id) is lease:
                self.neutron.update_port(port_id, dns_name=dns_label)

        self.background.submit(port_id, f"name endpoint {endpoint_id[:12]} {dns_label!r}",
                               write, group=lease.network_id)

    def _plug(self, net: NetworkRecord, lease: Lease, endpoint_id: str,
              record: EndpointRecord | None = None) -> None:
        vif = vif_of(lease.port, net.mtu, self.settings.default_bridge)
        self.binder.plug(vif, endpoint_id, record.as_local() if record else None)

    # -- join ------------------------------------------------------------------------------
    def join(self, net: NetworkRecord, endpoint_id: str, netns: str) -> Lease:
        """Return only when traffic can flow, so the container never starts deaf."""
        lease = self.endpoint(net, endpoint_id)
        lease.netns = netns or lease.netns
        vif = vif_of(lease.port, net.mtu, self.settings.default_bridge)
        if not self.binder.is_plugged(vif):
            self.binder.plug(vif, endpoint_id)  # lost: host reboot, manual cleanup
        timeout = self.settings.plug_timeout
        started = time.monotonic()
        wired = self.binder.wait_wired(vif, timeout)
        if wired is None:  # not visible on this host: ask Neutron
            wired = self._wait_active(lease.port.id, timeout)
        if wired:
            LOG.debug("port %s wired in %.3f s", vif.port_id, time.monotonic() - started)
            return lease
        message = (f"port {vif.port_id} was not wired within {timeout} s "
                   "(is ovn-controller running and connected?)")
        if self.settings.plug_is_fatal:
            raise errors.BackendUnavailable(message)
        LOG.warning("%s; starting the container anyway", message)
        return lease

    def _wait_active(self, port_id: str, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.neutron.get_port(port_id).status == "ACTIVE":
                return True
            time.sleep(0.5)
        return False

    def endpoint(self, net: NetworkRecord, endpoint_id: str) -> Lease:
        """The endpoint's lease: known, else found by device_id (1 GET after a
        restart) or, before Neutron recorded it, through its OVS interface."""
        known = self.state.endpoint(endpoint_id)
        if known is not None:
            return known
        found = self.neutron.ports(network_id=net.neutron_id, device_id=endpoint_id)
        if not found:
            port_id = self.binder.port_of_endpoint(endpoint_id)
            found = [self.neutron.get_port(port_id)] if port_id else []
        if not found or found[0].network_id != net.neutron_id:
            raise errors.NotFound(f"endpoint {endpoint_id[:12]} has no Neutron port")
        port = found[0]
        lease = self.state.hand_out(port, net.neutron_id)
        # The description is the tenant's to edit: the group it names is the
        # endpoint's own (and deleted with it) only when the port is in it.
        group = spec.decode(port.description)[0]
        lease.expose_group = group if group in port.security_group_ids else None
        lease.plain = not ownership.is_adopted(port) and not port.description
        # The tags a front end's record puts on the port, as its interface keeps
        # them: the port read here may predate the record (written again after a
        # restart), and a port going back to the pool must lose them.
        kept = EndpointRecord.from_local(self.binder.endpoint_record_of(
            vif_of(port, None, self.settings.default_bridge)))
        lease.record_tags = kept.tags if kept is not None else ()
        if not self.state.attach(lease, endpoint_id):
            return self.state.endpoint(endpoint_id) or lease
        return lease

    # -- detach ----------------------------------------------------------------------------
    def detach(self, net: NetworkRecord | None, endpoint_id: str) -> Lease | None:
        """The endpoint is gone: its port goes back to the pool when it can serve
        the next container as it is, else it is deleted (or, a user's, given back).
        None when the endpoint was already gone (Docker replays)."""
        lease = self.state.endpoint(endpoint_id)
        if lease is None and net is not None:
            try:
                lease = self.endpoint(net, endpoint_id)
            except errors.NotFound:
                return None
        if lease is None:
            return None
        if self.state.detach(endpoint_id) is not lease:
            # A concurrent detach of the same endpoint (kubelet's two DELs of a
            # sandbox can overlap) won: it alone returns or deletes the port, or
            # the port would be both back in the pool and deleted.
            return None
        if net is not None and lease.plain and not lease.adopted \
                and self.pool.accepts(net, lease.port):
            # Back to the pool, still bound and plugged: the next container takes it
            # with no Neutron request, and no port is deleted and created again.
            # Clearing its endpoint in OVS (~3 ms) is local work Docker need not wait
            # for.  Neutron's record is queued first: a next container's record of
            # itself, queued once the port is ready again, always lands after it.
            self.background.submit(
                lease.port.id, f"return port {lease.port.id} to the pool",
                lambda: self._record_back_in_pool(lease), group=lease.network_id)
            self._unplugger.submit(self._return_to_pool, net, lease)
            return lease
        # The container has left: removing its veth and OVS port (~40 ms of OVSDB
        # and netlink) is cleanup Docker need not wait for.  A crash in between
        # leaves a veth without a port, which the garbage collector removes.
        mtu = net.mtu if net else None
        self._unplugger.submit(self.binder.unplug,
                               vif_of(lease.port, mtu, self.settings.default_bridge))
        self._dispose(net, lease)
        return lease

    def _record_back_in_pool(self, lease: Lease) -> None:
        """1 PUT; and 1 more to remove the tags a front end's record put on the
        port (a pod's), so a ready port names nobody."""
        port_id = lease.port.id
        # The front end's groups again (a NetworkPolicy may have changed them).
        groups = list(self.settings.security_group_ids) or None
        self.neutron.update_port(port_id, device_id="", device_owner=self.settings.owners.pool,
                                 name=marks.POOL_PORT_NAME, security_group_ids=groups)
        own = self.settings.where.tags  # nested: the VM's tag stays
        if lease.record_tags or set(lease.port.tags) != set(own):
            self.neutron.set_port_tags(port_id, list(own))

    def _return_to_pool(self, net: NetworkRecord, lease: Lease) -> None:
        """In the unplug thread: the port is ready again, or (OVS refused) deleted."""
        if not self.pool.take_back(net, lease.port):
            self.binder.unplug(vif_of(lease.port, net.mtu, self.settings.default_bridge))
            self._dispose(net, lease)  # cancels the queued return first

    def _dispose(self, net: NetworkRecord | None, lease: Lease) -> None:
        """Delete Kuryr's port, or give a user's back unbound and ownerless, and
        delete the endpoint's own security group.  In the background: the
        container is already unplugged."""
        self.state.end(lease)
        port = lease.port
        group = lease.expose_group
        lease.expose_group = None
        self.background.cancel(port.id)
        placement = self.settings.where
        if lease.adopted:
            groups = [g for g in port.security_group_ids if g != group]

            def give_back() -> None:
                placement.detach([port])
                self.neutron.update_port(
                    port.id, binding_host_id="" if placement.binding_host_id else None,
                    device_owner="", device_id="", security_group_ids=groups, description="")
                if placement.tags:
                    self.neutron.set_port_tags(
                        port.id, [t for t in port.tags if t not in placement.tags])
            self.background.submit(port.id, f"give back adopted port {port.id}", give_back,
                                   group=lease.network_id)
        else:
            def delete() -> None:
                placement.detach([port])  # nested: a sub-port cannot be deleted
                self.neutron.delete_port(port.id)
            self.background.submit(port.id, f"delete port {port.id}", delete,
                                   group=lease.network_id)
        if group:
            self.background.submit(port.id, f"delete security group {group}",
                                   lambda: self.neutron.delete_security_group(group),
                                   group=lease.network_id)

    # -- restarts ----------------------------------------------------------------------------
    def record_lost_endpoints(self) -> int:
        """After a crash: endpoints OVS knows whose record in Neutron never landed
        (the background write was lost with the process), written again (1 GET,
        then 1 PUT each in the background).  That includes a recycled port that
        still names the container it served before: its return to the pool and
        the next container's record were both queued when the process died."""
        lost = 0
        for port in self.neutron.ports(**self.settings.where.port_filters()):
            if port.device_owner not in self.settings.owners.all:
                continue
            vif = vif_of(port, None, self.settings.default_bridge)
            endpoint_id = self.binder.endpoint_of(vif)
            if not endpoint_id:
                continue
            record = EndpointRecord.from_local(self.binder.endpoint_record_of(vif))
            recorded = record.device_id if record else endpoint_id
            if recorded == port.device_id and port.device_owner == self.settings.owners.container:
                continue
            lost += 1
            self._record_endpoint_later(port, endpoint_id, port.network_id, given=record)
        return lost

    # -- release ---------------------------------------------------------------------------
    def release(self, net: NetworkRecord, address: str) -> None:
        """Docker released ``address``.  Only a lease that never served an endpoint
        frees its port here (DeleteEndpoint did for the others), and only while
        it is the port's current hand-out: a late release never touches a port
        that went back to the pool and on to the next container."""
        lease = self.state.release_hold(net.neutron_id, address)
        if lease is None:
            self._release_unknown(net, address)
            return
        if lease.ended or lease.endpoint_id is not None or lease.held:
            return
        if not self.state.is_current(lease):
            LOG.info("late release of %s: port %s has moved on", address, lease.port.id)
            return
        self._free_unattached(net, lease)

    def _free_unattached(self, net: NetworkRecord, lease: Lease) -> None:
        """A lease no endpoint took: its port goes back to the pool or away."""
        self.state.forget_holds(lease)
        self.state.stop_awaiting_v6(lease)
        self.state.end(lease)
        if lease.from_pool and self.pool.recycle(net, lease.port):
            return  # never left the pool's state in Neutron: nothing to write
        vif = vif_of(lease.port, net.mtu, self.settings.default_bridge)
        if lease.from_pool:
            self._unplugger.submit(self.binder.unplug, vif)
        self._dispose(net, lease)

    def _release_unknown(self, net: NetworkRecord, address: str) -> None:
        """A release this process has no lease for (Kuryr restarted since it handed
        the address out): free only a reservation of this host that no endpoint
        took (1 GET)."""
        for port in self.neutron.ports(network_id=net.neutron_id, ip_address=address):
            if port.device_owner != self.settings.owners.unbound or port.device_id \
                    or not self.settings.where.holds(port):
                continue
            lease = self.state.hand_out(port, net.neutron_id)
            self._dispose(net, lease)


def _name_for(port: Port, endpoint_id: str, adopted: bool) -> str | None:
    """A port Kuryr made is named after the endpoint that now has it (a pooled
    port was "kuryr-port-pool", one made at RequestAddress knew no endpoint yet),
    so Neutron tells containers' ports from ready ones by name too.  A user's
    pre-created port keeps the name the user gave it."""
    if adopted or not port.name.startswith(marks.PORT_NAME_PREFIX):
        return None
    name = marks.container_port_name(endpoint_id)
    return name if name != port.name else None

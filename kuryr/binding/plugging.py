"""One plug path and one unplug path for container ports, dispatched by VIF type.

``build_binder`` chooses the Binder from [DEFAULT] port_driver once, at
start-up; the veth Binder then dispatches each VIF by its ``vif_type`` (as
Neutron's binding says) to the way that type joins the host's switch:

=================  ===========================================================
vif_type           what plug does with the veth's host end
=================  ===========================================================
ovs, unbound       port on the OVS bridge ``vif.bridge``, with the external_ids
                   OVN binds by (iface-id, attached-mac, ...)
bridge             enslaved to the Linux bridge ``vif.bridge``
binding_failed     nothing: BackendUnavailable naming the port and this host
anything else      nothing: InvalidInput naming the type
=================  ===========================================================

Inside a VM (nested) Neutron's binding is the hypervisor's business (and a
VM's credentials cannot read it), so the driver alone decides:

==============================  ===========================================
port_driver / vlan_tagging      the container's interface
==============================  ===========================================
nested-vlan / ovs               a veth whose VM end is an access port, tag =
                                the sub-port's VLAN id, of the VM's own OVS
                                bridge [binding] ovs_bridge (which also holds
                                the VM's NIC as the trunk)
nested-vlan / kernel            an 802.1Q device on [binding] link_iface
nested-macvlan / ipvlan         an ipvlan (L2) device on [binding] link_iface:
                                the VM NIC's MAC with the container's address
nested-macvlan / routed-veth    a veth; the VM routes the container's /32 to
                                it and answers ARP for it on link_iface
                                (proxy ARP): the same MAC and addresses on
                                the wire, with any kernel
==============================  ===========================================

Binding never calls Neutron: for VIF types whose wiring cannot be seen
locally, ``wait_wired`` returns None and the caller asks Neutron.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Protocol

from kuryr import errors
from kuryr.binding import UnsupportedDriver, netlink
from kuryr.binding.ovs import ENDPOINT_KEY, OVS, RECORD_PREFIX
from kuryr.binding.vif import VIF

__all__ = ["DRIVERS", "Binder", "BinderFactory", "ChildDeviceBinder", "HostLinks", "Links",
           "Nested", "Switch", "UnsupportedDriver", "VethBinder", "build_binder"]

LOG = logging.getLogger(__name__)


class Binder(Protocol):
    """Plugs and unplugs the host side of container ports (what the core calls)."""

    def plug(self, vif: VIF, endpoint_id: str = "",
             record: Mapping[str, str] | None = None) -> None:
        """Make the VIF's interfaces and attach the host end; idempotent.
        ``record``: how the front end records the endpoint, kept locally with it.

        On failure nothing this call made is left behind.
        """

    def unplug(self, vif: VIF) -> None:
        """Detach and delete the VIF's interfaces; best effort, never raises."""

    def wait_wired(self, vif: VIF, timeout: float) -> bool | None:
        """True once traffic can flow, False at the timeout, None when it cannot
        be seen on this host (then Neutron's port status is the answer)."""

    def forget_endpoint(self, vif: VIF) -> None:
        """The VIF no longer serves an endpoint (its port goes back to a pool)."""

    def endpoint_of(self, vif: VIF) -> str | None:
        """The endpoint recorded on the VIF's interface at plug time (local read)."""

    def endpoint_record_of(self, vif: VIF) -> dict[str, str]:
        """The ``record`` given at plug time (local read; empty when none)."""

    def port_of_endpoint(self, endpoint_id: str) -> str | None:
        """The Neutron port id plugged for ``endpoint_id`` (local read)."""

    def is_plugged(self, vif: VIF) -> bool:
        """The VIF's host end exists."""

    def is_free(self, vif: VIF) -> bool:
        """The VIF's container end is still in the host's namespace (no container took it)."""


# -- the host operations a Binder is made of --------------------------------------------------

class Links(Protocol):
    """Network interfaces in the host's namespace; failures raise netlink.LinkError."""

    def create_veth(self, vif: VIF) -> bool:
        """Make the VIF's veth pair, host end up; True when this call made it."""

    def delete_link(self, ifname: str) -> bool:
        """Delete a link (and its veth peer); False when there was none."""

    def link_exists(self, ifname: str) -> bool: ...

    def attach_to_linux_bridge(self, ifname: str, bridge: str) -> None: ...

    def route_to_container(self, ifname: str, addresses: tuple[str, ...],
                           link_iface: str) -> None: ...

    def send_full_checksums(self, ifname: str) -> bool:
        """Turn tx checksum offload off on ``ifname``; False when it is not here."""


class Switch(Protocol):
    """What a Binder needs of Open vSwitch (kuryr.binding.ovs.OVS); failures raise."""

    def plug(self, vif: VIF, ifname: str | None = None, endpoint_id: str = "",
             record: Mapping[str, str] | None = None, tag: int | None = None) -> None: ...

    def unplug(self, ifname: str, bridge: str | None = None) -> None: ...

    def forget_endpoint(self, ifname: str) -> None: ...

    def interface_external_ids(self, ifname: str) -> dict[str, str]: ...

    def port_of_endpoint(self, endpoint_id: str) -> str | None: ...

    def wait_installed(self, ifname: str, timeout: float) -> bool: ...

    def datapath_type(self, bridge: str) -> str:
        """The bridge's datapath_type ("netdev": the userspace datapath)."""


class HostLinks:
    """Links through netlink (pyroute2); every failure becomes a netlink.LinkError."""

    def create_veth(self, vif: VIF) -> bool:
        with _as_link_error(f"cannot create veth {vif.host_ifname}"):
            return netlink.create_veth(vif)

    def delete_link(self, ifname: str) -> bool:
        with _as_link_error(f"cannot delete {ifname}"):
            return netlink.delete_link(ifname)

    def link_exists(self, ifname: str) -> bool:
        with _as_link_error(f"cannot look up {ifname}"):
            return netlink.link_exists(ifname)

    def attach_to_linux_bridge(self, ifname: str, bridge: str) -> None:
        with _as_link_error(f"cannot attach {ifname} to Linux bridge {bridge}"):
            netlink.attach_to_linux_bridge(ifname, bridge)

    def route_to_container(self, ifname: str, addresses: tuple[str, ...],
                           link_iface: str) -> None:
        with _as_link_error(f"cannot route {', '.join(addresses)} to {ifname}"):
            netlink.route_to_container(ifname, addresses, link_iface)

    def send_full_checksums(self, ifname: str) -> bool:
        with _as_link_error(f"cannot turn tx checksum offload off on {ifname}"):
            return netlink.send_full_checksums(ifname)


@contextlib.contextmanager
def _as_link_error(what: str) -> Iterator[None]:
    try:
        yield
    except netlink.LinkError:
        raise
    except Exception as exc:  # pyroute2 raises NetlinkError, OSError, IndexError...
        raise netlink.LinkError(f"{what}: {exc}") from exc


@contextlib.contextmanager
def _ovs_failure(what: str) -> Iterator[None]:
    """Any failure of Open vSwitch (ovsdbapp raises RuntimeError, TimeoutException,
    OVSError, ...) is BackendUnavailable, its message saying what was being done."""
    try:
        yield
    except errors.KuryrError:
        raise
    except Exception as exc:
        raise errors.BackendUnavailable(f"Open vSwitch: {what}: {exc}") from exc


@contextlib.contextmanager
def _link_failure() -> Iterator[None]:
    """A netlink failure is the host's: a KuryrError (500) naming the interface."""
    try:
        yield
    except netlink.LinkError as exc:
        raise errors.KuryrError(str(exc)) from exc


# -- how each VIF type joins the host's switch ------------------------------------------------

# A sub-port is wired by the hypervisor's OVN as soon as it is on the trunk of a
# bound VM port (ovn-controller claims a child port of a port it already has in
# well under a second).  Neutron's status cannot say: Neutron 29's OVN trunk
# driver sets a new sub-port to the parent's status at once, and under
# concurrent trunk changes a sub-port stayed DOWN in Neutron for minutes while
# OVN had bound it and carried its traffic (seen here with 10 concurrent starts).
# Nothing in a VM can see OVN, so a nested container starts once its interface is
# plugged; a ready (pooled) sub-port was added long before.
SUBPORT_WIRED = True

class _Wiring(Protocol):
    """The attachment of a veth's host end for one family of VIF types."""

    def attach(self, vif: VIF, endpoint_id: str,
               record: Mapping[str, str] | None = None) -> None: ...

    def detach(self, vif: VIF) -> None:
        """Undo attach (may raise: the binder logs)."""

    def wait(self, vif: VIF, timeout: float) -> bool | None: ...

    def forget_endpoint(self, vif: VIF) -> None: ...

    def endpoint_of(self, vif: VIF) -> str | None: ...

    def endpoint_record_of(self, vif: VIF) -> dict[str, str]: ...

    def needs_full_checksums(self, vif: VIF) -> bool:
        """Whether frames from the container must carry full checksums."""


class _OvsWiring:
    """A port on an OVS bridge that OVN (or the OVS agent) binds by its external_ids."""

    def __init__(self, switch: Switch) -> None:
        self._switch = switch
        # bridge -> datapath_type; a bridge does not change datapath under a
        # running Kuryr (OVS would have to recreate all its ports).
        self._datapaths: dict[str, str] = {}

    def needs_full_checksums(self, vif: VIF) -> bool:
        """The userspace datapath (see netlink.send_full_checksums)."""
        datapath = self._datapaths.get(vif.bridge)
        if datapath is None:
            with _ovs_failure(f"cannot read the datapath of bridge {vif.bridge}"):
                datapath = self._switch.datapath_type(vif.bridge)
            self._datapaths[vif.bridge] = datapath
        return datapath == "netdev"

    def attach(self, vif: VIF, endpoint_id: str,
               record: Mapping[str, str] | None = None) -> None:
        with _ovs_failure(f"cannot plug {vif.host_ifname} (port {vif.port_id}) "
                          f"into bridge {vif.bridge}"):
            self._switch.plug(vif, endpoint_id=endpoint_id, record=record)

    def detach(self, vif: VIF) -> None:
        self._switch.unplug(vif.host_ifname)

    def wait(self, vif: VIF, timeout: float) -> bool | None:
        with _ovs_failure(f"cannot watch {vif.host_ifname}"):
            return self._switch.wait_installed(vif.host_ifname, timeout)

    def forget_endpoint(self, vif: VIF) -> None:
        with _ovs_failure(f"cannot clear the endpoint of {vif.host_ifname}"):
            self._switch.forget_endpoint(vif.host_ifname)

    def endpoint_of(self, vif: VIF) -> str | None:
        with _ovs_failure(f"cannot read {vif.host_ifname}"):
            return self._switch.interface_external_ids(vif.host_ifname).get(ENDPOINT_KEY)

    def endpoint_record_of(self, vif: VIF) -> dict[str, str]:
        with _ovs_failure(f"cannot read {vif.host_ifname}"):
            ids = self._switch.interface_external_ids(vif.host_ifname)
        return {k[len(RECORD_PREFIX):]: v for k, v in ids.items() if k.startswith(RECORD_PREFIX)}


class _RecordsNothing:
    """A wiring with nowhere to keep an endpoint's record (no OVS interface),
    whose frames the kernel forwards (checksum offload is the kernel's business)."""

    def needs_full_checksums(self, vif: VIF) -> bool:
        return False

    def forget_endpoint(self, vif: VIF) -> None:
        """Nothing was recorded."""

    def endpoint_of(self, vif: VIF) -> None:
        return None

    def endpoint_record_of(self, vif: VIF) -> dict[str, str]:
        return {}


class _LinuxBridgeWiring(_RecordsNothing):
    """A port of a Linux bridge (ML2/linuxbridge): nothing local says when it is wired."""

    def __init__(self, links: Links) -> None:
        self._links = links

    def attach(self, vif: VIF, endpoint_id: str,
               record: Mapping[str, str] | None = None) -> None:
        with _link_failure():
            self._links.attach_to_linux_bridge(vif.host_ifname, vif.bridge)

    def detach(self, vif: VIF) -> None:
        """Deleting the veth takes it off the bridge."""

    def wait(self, vif: VIF, timeout: float) -> None:
        return None


class _VlanAccessWiring(_OvsWiring):
    """nested-vlan tagged by the VM's own OVS bridge: the veth's VM end is an
    access port of the sub-port's VLAN; the VM's NIC, a port of the same bridge
    with no tag, carries every VLAN to the trunk.  Wired once plugged (see
    SUBPORT_WIRED)."""

    def __init__(self, switch: Switch, vlans: Callable[[str], int | None]) -> None:
        super().__init__(switch)
        self._vlans = vlans

    def attach(self, vif: VIF, endpoint_id: str,
               record: Mapping[str, str] | None = None) -> None:
        vlan = self._vlans(vif.port_id)
        if vlan is None:
            raise errors.BackendUnavailable(f"port {vif.port_id} is no sub-port of this VM's "
                                            "trunk: it has no VLAN id to plug with")
        with _ovs_failure(f"cannot plug {vif.host_ifname} (port {vif.port_id}, VLAN {vlan}) "
                          f"into bridge {vif.bridge}"):
            self._switch.plug(vif, endpoint_id=endpoint_id, record=record, tag=vlan)

    def wait(self, vif: VIF, timeout: float) -> bool:
        return SUBPORT_WIRED


class _RoutedWiring(_RecordsNothing):
    """nested-macvlan, routed: the VM routes the container's addresses to the veth
    and answers ARP for them on its NIC.  Nothing else is kept in the VM."""

    def __init__(self, links: Links, link_iface: str) -> None:
        self._links = links
        self._link_iface = link_iface

    def attach(self, vif: VIF, endpoint_id: str,
               record: Mapping[str, str] | None = None) -> None:
        with _link_failure():
            self._links.route_to_container(vif.host_ifname, vif.addresses, self._link_iface)

    def detach(self, vif: VIF) -> None:
        """Deleting the veth takes its routes."""

    def wait(self, vif: VIF, timeout: float) -> bool:
        # Wired once routed: the VM's port carries the traffic and its pairs admitted
        # the address before the port was handed out.  (The container's own port is
        # never bound: its status says nothing.)
        return True


# -- the veth Binder -------------------------------------------------------------------------

class VethBinder:
    """Containers on a host that is itself a Neutron/OVN chassis: a veth pair per port,
    its host end on the host's switch, its container end handed to the runtime."""

    def __init__(self, host: str, switch: Switch, links: Links | None = None,
                 vlans: Callable[[str], int | None] | None = None,
                 routed_via: str = "") -> None:
        """``vlans``: nested-vlan (OVS tagging in the VM): every port is an access
        port of its sub-port's VLAN id, whatever the hypervisor bound it as.
        ``routed_via``: nested-macvlan, routed: the VM's NIC."""
        self.host = host
        self._switch = switch
        self._links: Links = links if links is not None else HostLinks()
        ovs = _OvsWiring(switch) if vlans is None else _VlanAccessWiring(switch, vlans)
        self._ovs: _Wiring = ovs
        self._wirings: Mapping[str, _Wiring] = MappingProxyType({
            "ovs": ovs,
            "unbound": ovs,  # no binding yet: OVN binds it once it appears on br-int
            "bridge": _LinuxBridgeWiring(self._links),
        })
        # Nested: the hypervisor's binding is not the VM's to judge (nor to read).
        self._any_type: _Wiring | None = ovs if vlans is not None else None
        if routed_via:
            self._any_type = self._ovs = _RoutedWiring(self._links, routed_via)
        # Types Neutron reports but nothing on this host can plug.
        self._refusals: Mapping[str, Callable[[VIF], errors.KuryrError]] = MappingProxyType({
            "binding_failed": self._binding_failed,
        })

    # -- plug / unplug ----------------------------------------------------------------------
    def plug(self, vif: VIF, endpoint_id: str = "",
             record: Mapping[str, str] | None = None) -> None:
        wiring = self._wiring_to_plug(vif)  # refusals come before anything is made
        with _link_failure():
            made = self._links.create_veth(vif)
        try:
            if wiring.needs_full_checksums(vif):
                # Also on a pair an older Kuryr made (free ends only: a
                # container's end is in its namespace).
                with _link_failure():
                    self._links.send_full_checksums(vif.container_ifname)
            wiring.attach(vif, endpoint_id, record)
        except BaseException:
            if made:
                self._remove(vif, wiring)
            raise

    def unplug(self, vif: VIF) -> None:
        # A VIF of unknown or refused type may still have been plugged into OVS
        # (a stale or default vif_type): removing an absent OVS port is a no-op.
        self._remove(vif, self._wiring_of(vif))

    def _remove(self, vif: VIF, wiring: _Wiring) -> None:
        """Best effort: logged, never raised (the garbage collector retries)."""
        try:
            wiring.detach(vif)
        except Exception as exc:  # noqa: BLE001 - the veth must go regardless
            LOG.warning("could not detach %s (port %s) from bridge %s: %s",
                        vif.host_ifname, vif.port_id, vif.bridge, exc)
        try:
            self._links.delete_link(vif.host_ifname)
        except Exception as exc:  # noqa: BLE001
            LOG.warning("could not delete %s (port %s): %s", vif.host_ifname, vif.port_id, exc)

    def _wiring_of(self, vif: VIF) -> _Wiring:
        """How ``vif`` was plugged (for reading and removing: the OVS one when unknown)."""
        return self._any_type or self._wirings.get(vif.vif_type, self._ovs)

    def _wiring_to_plug(self, vif: VIF) -> _Wiring:
        refuse = self._refusals.get(vif.vif_type)
        if refuse is not None and self._any_type is None:
            raise refuse(vif)
        wiring = self._any_type or self._wirings.get(vif.vif_type)
        if wiring is None:
            raise errors.InvalidInput(
                f"Neutron bound port {vif.port_id} as vif_type {vif.vif_type!r}, which Kuryr "
                f"cannot plug on this host (it plugs {', '.join(sorted(self._wirings))})")
        return wiring

    def _binding_failed(self, vif: VIF) -> errors.KuryrError:
        return errors.BackendUnavailable(
            f"Neutron could not bind port {vif.port_id} to host {self.host}: is this host "
            "an OVN chassis (or running a Neutron agent) under that name? ([DEFAULT] host)")

    # -- waiting and local state -------------------------------------------------------------
    def wait_wired(self, vif: VIF, timeout: float) -> bool | None:
        wiring = self._any_type or self._wirings.get(vif.vif_type)
        return None if wiring is None else wiring.wait(vif, timeout)

    def forget_endpoint(self, vif: VIF) -> None:
        self._wiring_of(vif).forget_endpoint(vif)

    def endpoint_of(self, vif: VIF) -> str | None:
        return self._wiring_of(vif).endpoint_of(vif)

    def endpoint_record_of(self, vif: VIF) -> dict[str, str]:
        return self._wiring_of(vif).endpoint_record_of(vif)

    def port_of_endpoint(self, endpoint_id: str) -> str | None:
        if isinstance(self._ovs, _RoutedWiring):
            return None  # nothing is recorded in the VM: no switch to ask
        with _ovs_failure(f"cannot look up endpoint {endpoint_id[:12]}"):
            return self._switch.port_of_endpoint(endpoint_id)

    def is_plugged(self, vif: VIF) -> bool:
        with _link_failure():
            return self._links.link_exists(vif.host_ifname)

    def is_free(self, vif: VIF) -> bool:
        with _link_failure():
            return self._links.link_exists(vif.container_ifname)


# -- a container's device made on the VM's NIC (nested, kernel devices) ---------------------------

class ChildDeviceBinder:
    """nested-vlan with kernel tagging (an 802.1Q device) or nested-macvlan (an
    ipvlan L2 device) on the VM's NIC: the container's interface IS the device,
    made in the VM's namespace and moved into the container by the runtime.
    Nothing stays behind in the VM: no endpoint is recorded locally, and the
    device is gone from the VM once a container has it."""

    def __init__(self, link_iface: str, kind: str,
                 vlans: Callable[[str], int | None] | None = None) -> None:
        self.link_iface = link_iface
        self.kind = kind
        self._vlans = vlans

    def plug(self, vif: VIF, endpoint_id: str = "",
             record: Mapping[str, str] | None = None) -> None:
        vlan = self._vlans(vif.port_id) if self._vlans is not None else None
        if self.kind == "vlan" and vlan is None:
            raise errors.BackendUnavailable(f"port {vif.port_id} is no sub-port of this VM's "
                                            "trunk: it has no VLAN id to plug with")
        with _link_failure():
            netlink.create_child_link(vif.container_ifname, self.link_iface, self.kind,
                                      vlan_id=vlan, mac=vif.mac, mtu=vif.mtu)

    def unplug(self, vif: VIF) -> None:
        try:
            netlink.delete_link(vif.container_ifname)  # still in the VM: no container took it
        except Exception as exc:  # noqa: BLE001 - best effort, as the veth binder's
            LOG.warning("could not delete %s (port %s): %s", vif.container_ifname,
                        vif.port_id, exc)

    def wait_wired(self, vif: VIF, timeout: float) -> bool:
        if self.kind == "ipvlan":
            return True  # the VM port's pairs admitted the address before it was handed out
        return SUBPORT_WIRED

    def forget_endpoint(self, vif: VIF) -> None:
        """Nothing is recorded in the VM."""

    def endpoint_of(self, vif: VIF) -> None:
        return None

    def endpoint_record_of(self, vif: VIF) -> dict[str, str]:
        return {}

    def port_of_endpoint(self, endpoint_id: str) -> None:
        return None

    def is_plugged(self, vif: VIF) -> bool:
        with _link_failure():
            return netlink.link_exists(vif.container_ifname)

    def is_free(self, vif: VIF) -> bool:
        return self.is_plugged(vif)


# -- the registry: [DEFAULT] port_driver -> Binder ---------------------------------------------

@dataclass(frozen=True)
class Nested:
    """What a nested driver needs besides OVS: the VM's NIC, who tags VLANs, and
    the VLAN id of each sub-port (the placement's, read in memory)."""

    link_iface: str
    vlan_tagging: str  # "ovs": the VM's OVS bridge ([binding] ovs_bridge); "kernel"
    vlans: Callable[[str], int | None]
    pairs_device: str = "ipvlan"  # nested-macvlan: "ipvlan" or "routed-veth"


BinderFactory = Callable[[OVS, str, "Nested | None"], Binder]
"""(the host's OVS, this host's name as Neutron knows it, nested settings) -> a Binder."""


def _veth(ovs: OVS, host: str, nested: Nested | None) -> Binder:
    return VethBinder(host, ovs)


def _nested(driver: str, nested: Nested | None) -> Nested:
    if nested is None or not nested.link_iface:
        raise UnsupportedDriver(f"[DEFAULT] port_driver = {driver} needs [binding] link_iface: "
                                "the VM's interface on its Neutron port (e.g. eth0)")
    return nested


def _nested_vlan(ovs: OVS, host: str, nested: Nested | None) -> Binder:
    settings = _nested("nested-vlan", nested)
    if settings.vlan_tagging == "ovs":
        return VethBinder(host, ovs, vlans=settings.vlans)
    return ChildDeviceBinder(settings.link_iface, "vlan", settings.vlans)


def _nested_macvlan(ovs: OVS, host: str, nested: Nested | None) -> Binder:
    settings = _nested("nested-macvlan", nested)
    if settings.pairs_device == "routed-veth":
        return VethBinder(host, ovs, routed_via=settings.link_iface)
    return ChildDeviceBinder(settings.link_iface, "ipvlan")


DRIVERS: Mapping[str, BinderFactory] = MappingProxyType({
    "veth": _veth,
    "nested-vlan": _nested_vlan,
    "nested-macvlan": _nested_macvlan,
})


def build_binder(port_driver: str, ovs: OVS, host: str, nested: Nested | None = None) -> Binder:
    """The Binder for [DEFAULT] port_driver; UnsupportedDriver when there is none."""
    factory = DRIVERS.get(port_driver)
    if factory is None:
        raise UnsupportedDriver(
            f"[DEFAULT] port_driver = {port_driver!r} is unknown: "
            f"choose one of {', '.join(DRIVERS)}")
    return factory(ovs, host, nested)

"""Plugging host interfaces into Open vSwitch through OVSDB (ovsdbapp)."""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Mapping
from typing import TYPE_CHECKING

from ovsdbapp.backend.ovs_idl import connection, idlutils
from ovsdbapp.backend.ovs_idl import event as row_events
from ovsdbapp.schema.open_vswitch import impl_idl

from kuryr.binding.vif import VIF

if TYPE_CHECKING:
    from ovs.db import idl as ovs_idl  # type: ignore[import-untyped]

LOG = logging.getLogger(__name__)
ENDPOINT_KEY = "kuryr-endpoint-id"
# What a restarted Kuryr serves again for the endpoint's published ports, kept
# where only root writes (a Neutron port description is the tenant's to edit):
# the container's namespace (Docker's sandbox key: a path named after the
# sandbox's random id, removed with it, and bound only when the container
# starts, after Kuryr is told it), its address and the ports as bound.
NETNS_KEY = "kuryr-netns"
TARGET_KEY = "kuryr-publish-address"
PUBLISHED_KEY = "kuryr-published"
PUBLISH_KEYS = (NETNS_KEY, TARGET_KEY, PUBLISHED_KEY)
# How a front end that is not Docker records the endpoint in Neutron (the CNI
# daemon: device_id = the pod's uid, its name and tags), kept on the interface
# from plug time, so a restarted daemon writes a record lost with the process.
RECORD_PREFIX = "kuryr-record-"
# Set on the Interface by ovn-controller once the port's flows are installed.
INSTALLED_KEY = "ovn-installed"


def chassis_mismatch(host: str, external_ids: Mapping[str, str],
                     system_hostname: str) -> str | None:
    """Why Neutron could not bind ports for ``host`` to this OVN chassis, or None.

    ML2/OVN binds a port to the chassis whose hostname equals the port's
    binding:host_id; ovn-controller reports external_ids:hostname, or the
    system's host name when that is unset.  An Open vSwitch with no ovn-remote
    is no OVN chassis (ML2/OVS agents bind by their own host option): nothing
    to compare."""
    if not external_ids.get("ovn-remote"):
        return None
    chassis_hostname = external_ids.get("hostname") or system_hostname
    if chassis_hostname == host:
        return None
    return (f"[DEFAULT] host is {host!r}, but this host's OVN chassis "
            f"{external_ids.get('system-id', '?')!r} is known to OVN as {chassis_hostname!r}: "
            "Neutron would bind every port to that other name and none would come up "
            f"here. Set [DEFAULT] host = {chassis_hostname} (or the chassis' "
            "external_ids:hostname to this host's name)")


class OVSError(Exception):
    """Open vSwitch refused or is unreachable."""


class _NotifyingIdl(connection.OvsdbIdl):  # type: ignore[misc]
    """An IDL that hands every row change to a RowEventHandler.

    python-ovs calls ``Idl.notify`` for each change it applies to its local
    replica (on the connection thread, under the connection's lock); the plain
    ovsdbapp IDL ignores it.  This is how neutron and ovn-octavia-provider hook
    row events in.
    """

    def __init__(self, remote: str, schema_helper: ovs_idl.SchemaHelper,
                 handler: row_events.RowEventHandler) -> None:
        super().__init__(remote, schema_helper)
        self.notify_handler = handler

    def notify(self, event: str, row: ovs_idl.Row, updates: ovs_idl.Row | None = None) -> None:
        self.notify_handler.notify(event, row, updates)


class VswitchAPI(impl_idl.OvsdbIdl):  # type: ignore[misc]
    """The Open_vSwitch API with its connection kept per instance.

    ovsdbapp's Backend keeps its connection on the class: the first
    instance's connection (endpoint, timeout, IDL) silently serves every later
    instance of the process, and stopping it stops them all.
    """

    def __init__(self, conn: connection.Connection) -> None:
        self._own_connection = conn
        super().__init__(conn)

    @property
    def ovsdb_connection(self) -> connection.Connection:
        return self._own_connection

    @ovsdb_connection.setter
    def ovsdb_connection(self, conn: connection.Connection) -> None:
        self._own_connection = conn


class _InterfaceInstalled(row_events.WaitEvent):  # type: ignore[misc]
    """One waiter: the Interface ``ifname`` carries external_ids:ovn-installed=true."""

    def __init__(self, ifname: str, timeout: float) -> None:
        super().__init__((self.ROW_CREATE, self.ROW_UPDATE), "Interface",
                         (("name", "=", ifname),
                          ("external_ids", "=", {INSTALLED_KEY: "true"})),
                         timeout=timeout)
        self.event_name = f"ovn-installed:{ifname}"

    # ovsdbapp's RowEvent compares by (class, table, events, conditions) and the
    # handler keeps a set: two concurrent waits on one interface would be a
    # single entry, and the first to finish would unregister the other.  Each
    # wait is its own event.
    def __eq__(self, other: object) -> bool:
        return self is other

    __hash__ = object.__hash__

    def wait(self) -> bool:
        return bool(self.event.wait(self.timeout))


class OVS:
    """One OVSDB connection for the life of the process (cheap per operation)."""

    def __init__(self, endpoint: str = "unix:/run/openvswitch/db.sock",
                 timeout: float = 10) -> None:
        self.endpoint = endpoint
        self.timeout = timeout
        self._api: VswitchAPI | None = None
        self._events: row_events.RowEventHandler | None = None
        self._lock = threading.Lock()

    @property
    def api(self) -> VswitchAPI:
        """The ovsdbapp Open_vSwitch API (connected on first use)."""
        return self._connected()[0]

    def _connected(self) -> tuple[VswitchAPI, row_events.RowEventHandler]:
        with self._lock:
            if self._api is None or self._events is None:
                try:
                    helper = idlutils.get_schema_helper(self.endpoint, "Open_vSwitch")
                except Exception as exc:
                    raise OVSError(f"cannot reach OVSDB at {self.endpoint}: {exc}") from exc
                for table in ("Open_vSwitch", "Bridge", "Port", "Interface"):
                    helper.register_table(table)
                handler = row_events.RowEventHandler()
                idl = _NotifyingIdl(self.endpoint, helper, handler)
                try:
                    api = VswitchAPI(connection.Connection(idl=idl, timeout=self.timeout))
                except Exception:
                    handler.shutdown()
                    raise
                self._api, self._events = api, handler
            return self._api, self._events

    def close(self) -> None:
        """Stop the connection's thread and the row-event thread (reconnects on next use)."""
        with self._lock:
            api, handler = self._api, self._events
            self._api = self._events = None
        if api is not None:
            api.ovsdb_connection.stop(timeout=self.timeout)
        if handler is not None:
            handler.shutdown()

    def switch_external_ids(self) -> dict[str, str]:
        """The Open_vSwitch row's external_ids (system-id, hostname, ovn-*)."""
        rows = self.api.db_list("Open_vSwitch", columns=["external_ids"]).execute(
            check_error=True)
        return dict(rows[0]["external_ids"]) if rows else {}

    def chassis_problem(self, host: str) -> str | None:
        """chassis_mismatch for this host's Open vSwitch; None (logged) when it
        cannot be read: Kuryr still starts, and plugging reports OVS's state."""
        try:
            ids = self.switch_external_ids()
        except Exception as exc:  # noqa: BLE001 - any failure: cannot check
            LOG.warning("cannot check that [DEFAULT] host %s is this host's OVN chassis: %s",
                        host, exc)
            return None
        return chassis_mismatch(host, ids, socket.gethostname())

    def bridge_exists(self, bridge: str) -> bool:
        return bool(self.api.br_exists(bridge).execute(check_error=True))

    def datapath_type(self, bridge: str) -> str:
        """"netdev" (userspace), "system" or "" (the kernel's); OVSError when
        there is no such bridge."""
        if not self.bridge_exists(bridge):
            raise OVSError(f"OVS bridge {bridge} does not exist")
        return str(self.api.db_get("Bridge", bridge, "datapath_type").execute(check_error=True))

    def plug(self, vif: VIF, ifname: str | None = None, endpoint_id: str = "",
             record: Mapping[str, str] | None = None, tag: int | None = None) -> None:
        """Add ``ifname`` (default: the VIF's host end) to the VIF's bridge (with
        ``tag``: as an access port of that VLAN).

        The external_ids are the ones OVN (and the OVS agent) use to bind the
        interface to the Neutron port.  Re-plugging an existing port is a no-op.
        """
        ifname = ifname or vif.host_ifname
        if not self.bridge_exists(vif.bridge):
            raise OVSError(f"OVS bridge {vif.bridge} does not exist")
        external_ids = {
            "iface-id": vif.port_id,
            "attached-mac": vif.mac,
            "iface-status": "active",
            "kuryr-managed": "true",
        }
        if endpoint_id:
            # Durable and local: a restarted Kuryr finds the endpoint's port here
            # even before Neutron has recorded the endpoint as device_id.
            external_ids[ENDPOINT_KEY] = endpoint_id
        external_ids.update({RECORD_PREFIX + k: v for k, v in (record or {}).items()})
        with self.api.transaction(check_error=True) as txn:
            txn.add(self.api.add_port(vif.bridge, ifname, may_exist=True))
            txn.add(self.api.db_set("Interface", ifname, ("external_ids", external_ids)))
            if tag is not None:  # nested: an access port of the sub-port's VLAN
                txn.add(self.api.db_set("Port", ifname, ("tag", tag)))

    def plug_internal(self, bridge: str, ifname: str, port_id: str, mac: str) -> None:
        """An internal interface of ``bridge`` (a device in the host's namespace)
        bound to Neutron port ``port_id`` with its MAC; idempotent."""
        if not self.bridge_exists(bridge):
            raise OVSError(f"OVS bridge {bridge} does not exist")
        external_ids = {"iface-id": port_id, "attached-mac": mac, "iface-status": "active"}
        with self.api.transaction(check_error=True) as txn:
            txn.add(self.api.add_port(bridge, ifname, may_exist=True))
            txn.add(self.api.db_set("Interface", ifname, ("type", "internal"),
                                    ("mac", mac), ("external_ids", external_ids)))

    def forget_endpoint(self, ifname: str) -> None:
        """The interface no longer serves an endpoint (its port went back to the pool):
        removes the endpoint id and what was recorded for its published ports."""
        recorded = [k for k in self.interface_external_ids(ifname)
                    if k.startswith(RECORD_PREFIX)]
        self.api.db_remove("Interface", ifname, "external_ids", ENDPOINT_KEY, *PUBLISH_KEYS,
                           *recorded, if_exists=True).execute(check_error=True)

    def record_published(self, ifname: str, values: dict[str, str]) -> bool:
        """Record ``values`` (PUBLISH_KEYS) on the interface; False when it is not
        an OVS interface (a Linux bridge port: nothing is recorded)."""
        if not self._interface_exists(ifname):
            return False
        self.api.db_set("Interface", ifname, ("external_ids", values)).execute(
            check_error=True)
        return True

    def forget_published(self, ifname: str) -> None:
        """Removes the published ports' record from the interface (if any)."""
        self.api.db_remove("Interface", ifname, "external_ids", *PUBLISH_KEYS,
                           if_exists=True).execute(check_error=True)

    def published_records(self) -> list[dict[str, str]]:
        """external_ids of every interface with a published-ports record."""
        return [dict(row.external_ids)
                for row in self.api.db_list_rows("Interface").execute(check_error=True)
                if PUBLISHED_KEY in row.external_ids]

    def _interface_exists(self, ifname: str) -> bool:
        return bool(self.api.db_find_rows("Interface", ("name", "=", ifname)).execute(
            check_error=True))

    def unplug(self, ifname: str, bridge: str | None = None) -> None:
        self.api.del_port(ifname, bridge=bridge, if_exists=True).execute(check_error=True)

    def interface_external_ids(self, ifname: str) -> dict[str, str]:
        rows = self.api.db_find_rows("Interface", ("name", "=", ifname)).execute(
            check_error=True)
        return dict(rows[0].external_ids) if rows else {}

    def wait_installed(self, ifname: str, timeout: float) -> bool:
        """Wait until ovn-controller has installed the flows for ``ifname``.

        OVN marks the Interface with external_ids:ovn-installed=true once
        traffic can flow.  The row event is registered before the current value
        is read, so a change in between is not missed; then the wait is on the
        event itself (no polling), and the event is unregistered in all cases.
        """
        api, handler = self._connected()
        waiter = _InterfaceInstalled(ifname, timeout)
        handler.watch_event(waiter)
        try:
            return self._installed_now(api, ifname) or waiter.wait()
        finally:
            handler.unwatch_event(waiter)

    @staticmethod
    def _installed_now(api: VswitchAPI, ifname: str) -> bool:
        """Read from the local replica (the IDL), under the connection's lock."""
        with api.ovsdb_connection.lock:
            row = api.lookup("Interface", ifname, default=None)
            return row is not None and row.external_ids.get(INSTALLED_KEY) == "true"

    def port_of_endpoint(self, endpoint_id: str) -> str | None:
        """The Neutron port id Kuryr plugged for ``endpoint_id`` (local lookup)."""
        for row in self.api.db_list_rows("Interface").execute(check_error=True):
            if row.external_ids.get(ENDPOINT_KEY) == endpoint_id:
                port_id = row.external_ids.get("iface-id")
                return str(port_id) if port_id is not None else None
        return None

    def endpoint_ports(self) -> dict[str, str]:
        """Every endpoint Kuryr recorded on an interface: endpoint id -> Neutron port
        id (any front end's: the caller tells them apart by the port's owner)."""
        return {str(row.external_ids[ENDPOINT_KEY]): str(row.external_ids.get("iface-id", ""))
                for row in self.api.db_list_rows("Interface").execute(check_error=True)
                if ENDPOINT_KEY in row.external_ids}

    def managed_interfaces(self) -> dict[str, str]:
        """Interfaces Kuryr plugged (any bridge): name -> Neutron port id."""
        return {row.name: row.external_ids.get("iface-id", "")
                for row in self.api.db_list_rows("Interface").execute(check_error=True)
                if row.external_ids.get("kuryr-managed") == "true"}

    def managed_ports(self, bridge: str) -> list[str]:
        """Names of the interfaces on ``bridge`` that Kuryr plugged."""
        names = [row.name
                 for row in self.api.db_list_rows("Interface").execute(check_error=True)
                 if row.external_ids.get("kuryr-managed") == "true"]
        return [n for n in names if self.api.iface_to_br(n).execute() == bridge]

"""Plugging host interfaces into Open vSwitch through OVSDB (ovsdbapp)."""

from __future__ import annotations

import threading
import time

from ovsdbapp.backend.ovs_idl import connection, idlutils
from ovsdbapp.schema.open_vswitch import impl_idl

from kuryr.binding.vif import VIF

ENDPOINT_KEY = "kuryr-endpoint-id"


class OVSError(Exception):
    """Open vSwitch refused or is unreachable."""


class OVS:
    """One OVSDB connection for the life of the process (cheap per operation)."""

    def __init__(self, endpoint: str = "unix:/run/openvswitch/db.sock",
                 timeout: float = 10) -> None:
        self.endpoint = endpoint
        self.timeout = timeout
        self._api: impl_idl.OvsdbIdl | None = None
        self._lock = threading.Lock()

    @property
    def api(self) -> impl_idl.OvsdbIdl:
        with self._lock:
            if self._api is None:
                try:
                    helper = idlutils.get_schema_helper(self.endpoint, "Open_vSwitch")
                except Exception as exc:
                    raise OVSError(f"cannot reach OVSDB at {self.endpoint}: {exc}") from exc
                for table in ("Open_vSwitch", "Bridge", "Port", "Interface"):
                    helper.register_table(table)
                idl = connection.OvsdbIdl(self.endpoint, helper)
                self._api = impl_idl.OvsdbIdl(
                    connection.Connection(idl=idl, timeout=self.timeout))
            return self._api

    def bridge_exists(self, bridge: str) -> bool:
        return bool(self.api.br_exists(bridge).execute(check_error=True))

    def plug(self, vif: VIF, ifname: str | None = None, endpoint_id: str = "") -> None:
        """Add ``ifname`` (default: the VIF's host end) to the VIF's bridge.

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
        with self.api.transaction(check_error=True) as txn:
            txn.add(self.api.add_port(vif.bridge, ifname, may_exist=True))
            txn.add(self.api.db_set("Interface", ifname, ("external_ids", external_ids)))

    def forget_endpoint(self, ifname: str) -> None:
        """The interface no longer serves an endpoint (its port went back to the pool)."""
        self.api.db_remove("Interface", ifname, "external_ids", ENDPOINT_KEY,
                           if_exists=True).execute(check_error=True)

    def unplug(self, ifname: str, bridge: str | None = None) -> None:
        self.api.del_port(ifname, bridge=bridge, if_exists=True).execute(check_error=True)

    def interface_external_ids(self, ifname: str) -> dict[str, str]:
        rows = self.api.db_find_rows("Interface", ("name", "=", ifname)).execute(
            check_error=True)
        return dict(rows[0].external_ids) if rows else {}

    def wait_installed(self, ifname: str, timeout: float) -> bool:
        """Wait until ovn-controller has installed the flows for ``ifname``.

        OVN marks the Interface with external_ids:ovn-installed=true once
        traffic can flow; reading it costs nothing (the IDL is a local replica).
        """
        deadline = time.monotonic() + timeout
        while True:
            if self.interface_external_ids(ifname).get("ovn-installed") == "true":
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.02)

    def port_of_endpoint(self, endpoint_id: str) -> str | None:
        """The Neutron port id Kuryr plugged for ``endpoint_id`` (local lookup)."""
        for row in self.api.db_list_rows("Interface").execute(check_error=True):
            if row.external_ids.get(ENDPOINT_KEY) == endpoint_id:
                return row.external_ids.get("iface-id")
        return None

    def managed_interfaces(self) -> dict[str, str]:
        """Interfaces Kuryr plugged (any bridge): name -> Neutron port id."""
        return {row.name: row.external_ids.get("iface-id", "")
                for row in self.api.db_list_rows("Interface").execute(check_error=True)
                if row.external_ids.get("kuryr-managed") == "true"}

    def managed_ports(self, bridge: str) -> list[str]:
        """Names of the interfaces on ``bridge`` that Kuryr plugged."""
        names = []
        for row in self.api.db_list_rows("Interface").execute(check_error=True):
            if row.external_ids.get("kuryr-managed") == "true":
                names.append(row.name)
        return [n for n in names if self.api.iface_to_br(n).execute() == bridge]

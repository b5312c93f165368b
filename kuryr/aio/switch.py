"""Open vSwitch (userspace datapath) and OVN for the all-in-one stack."""

from __future__ import annotations

import contextlib
import ipaddress
import socket
import time
from dataclasses import dataclass
from pathlib import Path

from pyroute2.netlink.exceptions import NetlinkError

from kuryr.aio import links, procs, underlay
from kuryr.aio.layout import PHYSNET, UNDERLAY_MTU, UNDERLAY_OVS_BRIDGE, Layout
from kuryr.binding import netlink

OVS_SCHEMA = Path("/usr/share/openvswitch/vswitch.ovsschema")
NB_SCHEMA = Path("/usr/share/ovn/ovn-nb.ovsschema")
SB_SCHEMA = Path("/usr/share/ovn/ovn-sb.ovsschema")
# Tap devices the OVS userspace datapath creates and leaves behind on exit.
DATAPATH_TAPS = ("ovs-netdev", "br-int", "br-ex", UNDERLAY_OVS_BRIDGE, "genev_sys_6081")


def vsctl(*args: str, timeout: int = 10, db: Path | None = None) -> str:
    """ovs-vsctl on the host's Open vSwitch, or on the one whose socket is ``db``."""
    where = [f"--db=unix:{db}"] if db else []
    return procs.run(["ovs-vsctl", *where, f"--timeout={timeout}", *args], timeout=timeout + 5)


def bridge_datapath(bridge: str, db: Path | None = None) -> str | None:
    """The datapath type of ``bridge``, or None when the bridge does not exist."""
    where = [f"--db=unix:{db}"] if db else []
    out = procs.run(["ovs-vsctl", *where, "--timeout=5", "--if-exists", "get", "Bridge", bridge,
                     "datapath_type"], check=False, timeout=10).strip()
    return out.strip('"') or None


def ensure_netdev_bridge(bridge: str, *extra: str, db: Path | None = None) -> None:
    """Create ``bridge`` on the userspace datapath and check it really exists.

    ``ovs-vsctl add-br`` exits 0 even when the datapath cannot be created, so
    the bridge's Interface row is checked for an error afterwards.
    """
    vsctl("--may-exist", "add-br", bridge, "--", "set", "Bridge", bridge,
          "datapath_type=netdev", *extra, db=db)
    where = [f"--db=unix:{db}"] if db else []
    error = procs.run(["ovs-vsctl", *where, "--timeout=5", "get", "Interface", bridge, "error"],
                      check=False, timeout=10).strip()
    if error not in ("", "[]"):
        raise procs.StackError(f"OVS bridge {bridge} failed: {error} (an interface named "
                               f"{bridge} that kuryr-aio did not make is left alone: "
                               "`ip -d link show` it)")


def delete_taps(netns_path: Path, names: tuple[str, ...]) -> None:
    """Tap devices a dead userspace datapath left in a simulated machine's
    namespace (all of that namespace is the stack's)."""
    with netlink.in_netns(str(netns_path)) as ns:
        for name in names:
            for idx in ns.link_lookup(ifname=name):
                with contextlib.suppress(NetlinkError):
                    ns.link("del", index=idx)


def address_on(netns_path: Path | str, ifname: str, address: str, timeout: float = 10,
               only: bool = False) -> None:
    """``address`` (CIDR form) on ``ifname`` of that namespace, up; idempotent.
    Waits for the device: ovs-vswitchd makes a bridge's tap a moment after the
    bridge.  ``only``: any other IPv4 address of it goes (a device of the
    stack's own, whose address moved)."""
    ip, prefixlen = address.split("/")
    deadline = time.monotonic() + timeout
    with netlink.in_netns(str(netns_path)) as ns:
        while not (idx := ns.link_lookup(ifname=ifname)):
            if time.monotonic() > deadline:
                raise procs.StackError(f"{ifname} did not appear in {netns_path} "
                                       f"within {timeout:.0f} s")
            time.sleep(0.05)
        ns.link("set", index=idx[0], state="up")
        if not ns.get_addr(index=idx[0], address=ip):
            ns.addr("add", index=idx[0], address=ip, prefixlen=int(prefixlen))
        if only:
            for old in ns.get_addr(index=idx[0], family=socket.AF_INET):
                if old.get_attr("IFA_ADDRESS") != ip:
                    ns.addr("del", index=idx[0], address=old.get_attr("IFA_ADDRESS"),
                            prefixlen=old["prefixlen"])


def chassis_ids(layout: Layout, system_id: str, encap_ip: str,
                gateway: bool = False) -> dict[str, str]:
    """external_ids that make an Open vSwitch a chassis of the stack's OVN
    (ovn-controller reads them).  Only the main host is a gateway: it has the
    external network's bridge."""
    ids = {
        "system-id": system_id,
        "hostname": system_id,
        "ovn-remote": f"unix:{layout.sb_sock}",
        "ovn-encap-type": "geneve",
        "ovn-encap-ip": encap_ip,
        "ovn-bridge": "br-int",
        "ovn-bridge-datapath-type": "netdev",
    }
    if gateway:
        ids |= {"ovn-bridge-mappings": f"{PHYSNET}:br-ex",
                "ovn-cms-options": "enable-chassis-as-gw"}
    return ids


def underlay_mac(address: str) -> str:
    """The MAC of the tunnel endpoint at ``address`` (CIDR form): one per
    address, whichever host has it.  The userspace datapath keeps a learned
    endpoint's MAC for 15 minutes; a host made again on a freed address with a
    new random MAC got no tunnelled packet from the others until then (seen:
    the main host could not reach a re-made host's containers)."""
    packed = ipaddress.IPv4Interface(address).ip.packed
    return "02:00:" + ":".join(f"{byte:02x}" for byte in packed)


@dataclass(frozen=True)
class SwitchFiles:
    """One Open vSwitch (the host's, a simulated VM's): its database, its run
    directory (db.sock and PID files), its logs, and the argv prefix that
    starts its daemons where they belong (a VM's namespaces; none on the host)."""

    db: Path
    run_dir: Path
    db_log: Path
    switch_log: Path
    launcher: tuple[str, ...] = ()

    @property
    def db_sock(self) -> Path:
        return self.run_dir / "db.sock"

    @property
    def db_pid(self) -> Path:
        return self.run_dir / "ovsdb-server.pid"

    @property
    def switch_pid(self) -> Path:
        return self.run_dir / "ovs-vswitchd.pid"

    @property
    def logs(self) -> list[Path]:
        return [self.db_log, self.switch_log]

    def vsctl(self, *args: str, timeout: int = 10) -> str:
        return vsctl(*args, timeout=timeout, db=self.db_sock)

    def ovsdb_server_argv(self) -> list[str]:
        return [*self.launcher, "ovsdb-server", str(self.db),
                f"--remote=punix:{self.db_sock}",
                "--remote=db:Open_vSwitch,Open_vSwitch,manager_options",
                f"--pidfile={self.db_pid}", "--detach", "--no-chdir",
                f"--log-file={self.db_log}"]

    def vswitchd_argv(self) -> list[str]:
        return [*self.launcher, "ovs-vswitchd", f"unix:{self.db_sock}",
                f"--pidfile={self.switch_pid}", "--detach", "--no-chdir",
                f"--log-file={self.switch_log}"]

    def process_problems(self) -> list[str]:
        found = []
        if not procs.pid_alive(self.db_pid, "ovsdb-server"):
            found.append("ovsdb-server (Open vSwitch database) is not running")
        if not procs.pid_alive(self.switch_pid, "ovs-vswitchd"):
            found.append("ovs-vswitchd is not running")
        return found

    def switch_running(self) -> bool:
        return procs.pid_alive(self.switch_pid, "ovs-vswitchd")

    def start_database(self) -> None:
        """ovsdb-server on an initialised database (made the first time), with
        what must be set before ovs-vswitchd starts."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.db.parent.mkdir(parents=True, exist_ok=True)
        if not self.db.exists():
            procs.run(["ovsdb-tool", "create", str(self.db), str(OVS_SCHEMA)])
        if not procs.pid_alive(self.db_pid, "ovsdb-server"):
            procs.run(self.ovsdb_server_argv())
        self.vsctl("--no-wait", "init")
        # TSO must be on before ovs-vswitchd starts, or TCP through veths fails
        # on checksums while ping still works.
        self.vsctl("--no-wait", "set", "Open_vSwitch", ".",
                   "other_config:userspace-tso-enable=true")

    def start_switch(self) -> None:
        if not self.switch_running():
            procs.run(self.vswitchd_argv())

    def ensure_netdev_bridge(self, bridge: str, *extra: str) -> None:
        ensure_netdev_bridge(bridge, *extra, db=self.db_sock)

    def set_chassis(self, ids: dict[str, str]) -> None:
        self.vsctl("--no-wait", "set", "Open_vSwitch", ".",
                   *(f'external_ids:{key}="{value}"' for key, value in ids.items()))

    def ensure_integration_bridge(self) -> None:
        """br-int as OVN wants it: no flows but OVN's, no in-band control."""
        self.ensure_netdev_bridge("br-int", "fail-mode=secure",
                                  "other-config:disable-in-band=true")

    def plug_underlay(self, netns_path: Path | str, port: str, address: str) -> None:
        """The machine's end of its underlay veth on br-phy, and its underlay
        address on br-phy's own tap: the userspace datapath sends a tunnel's
        packets out of the OVS bridge its route to the remote goes through."""
        self.ensure_netdev_bridge(UNDERLAY_OVS_BRIDGE,
                                  f'other-config:hwaddr="{underlay_mac(address)}"')
        self.vsctl("--may-exist", "add-port", UNDERLAY_OVS_BRIDGE, port, "--",
                   "set", "Interface", UNDERLAY_OVS_BRIDGE, f"mtu_request={UNDERLAY_MTU}")
        address_on(netns_path, UNDERLAY_OVS_BRIDGE, address, only=True)

    def stop(self) -> None:
        procs.stop(self.switch_pid, "ovs-vswitchd")
        procs.stop(self.db_pid, "ovsdb-server")


class OpenVSwitch:
    name = "openvswitch"

    def __init__(self, layout: Layout) -> None:
        self.layout = layout
        self.files = SwitchFiles(db=layout.base / "ovs" / "conf.db", run_dir=layout.ovs_run,
                                 db_log=layout.log("ovsdb-server"),
                                 switch_log=layout.log("ovs-vswitchd"))
        self.db = self.files.db
        self.db_pid = self.files.db_pid
        self.switch_pid = self.files.switch_pid

    @property
    def logs(self) -> list[Path]:
        return self.files.logs

    def problems(self) -> list[str]:
        found = self.files.process_problems()
        if self.files.switch_running() and bridge_datapath("br-int") != "netdev":
            found.append("OVS bridge br-int is missing or not on the netdev datapath")
        if not found and not underlay.main_present():
            found.append(f"the simulated hosts' underlay ({underlay.main_address()} on "
                         f"{UNDERLAY_OVS_BRIDGE}) is missing")
        return found

    def up(self) -> None:
        self.files.start_database()
        # The main host is on the underlay from the start (whether or not a
        # simulated host exists): its tunnel endpoint never changes.
        self.files.set_chassis(chassis_ids(self.layout, self.layout.host,
                                           underlay.main_address().split("/")[0],
                                           gateway=True))
        if not self.files.switch_running():
            # A killed userspace datapath leaves its tap devices; a new one
            # cannot create its bridges while they exist.  Only the stack's
            # own: a br-int of another Open vSwitch is not ours to delete
            # (then ensure_netdev_bridge below fails, naming it).
            links.delete_created(self.layout, DATAPATH_TAPS)
        before = links.existing(DATAPATH_TAPS)
        self.files.start_switch()
        self.files.ensure_integration_bridge()
        ensure_netdev_bridge("br-ex")
        self.files.ensure_netdev_bridge(UNDERLAY_OVS_BRIDGE)
        links.record_new(self.layout, DATAPATH_TAPS, before)
        underlay.plug_main(self.layout)
        self.files.plug_underlay(underlay.ROOT_NETNS, underlay.MAIN_OVS_END,
                                 underlay.main_address())

    def down(self) -> None:
        self.files.stop()
        underlay.unplug_main(self.layout)


class OVN:
    name = "ovn"

    def __init__(self, layout: Layout) -> None:
        self.layout = layout
        run = layout.ovn_run
        self.dbs = {
            "nb": (layout.base / "ovn" / "ovnnb_db.db", NB_SCHEMA, layout.nb_sock,
                   run / "ovnnb_db.pid", run / "ovnnb_db.ctl"),
            "sb": (layout.base / "ovn" / "ovnsb_db.db", SB_SCHEMA, layout.sb_sock,
                   run / "ovnsb_db.pid", run / "ovnsb_db.ctl"),
        }
        self.northd_pid = run / "ovn-northd.pid"
        self.controller_pid = run / "ovn-controller.pid"

    @property
    def logs(self) -> list[Path]:
        return [self.layout.log(n) for n in
                ("ovsdb-server-nb", "ovsdb-server-sb", "ovn-northd", "ovn-controller")]

    def problems(self) -> list[str]:
        found = []
        for kind, (_, _, _, pid, _) in self.dbs.items():
            if not procs.pid_alive(pid, "ovsdb-server"):
                found.append(f"OVN {kind.upper()} database server is not running")
        if not procs.pid_alive(self.northd_pid, "ovn-northd"):
            found.append("ovn-northd is not running")
        if not procs.pid_alive(self.controller_pid, "ovn-controller"):
            found.append("ovn-controller is not running")
        elif not found and self.layout.host not in self._chassis_names():
            found.append(f"OVN has no chassis for this host ({self.layout.host})")
        return found

    def _chassis_names(self) -> str:
        return procs.run(["ovn-sbctl", "--timeout=5", f"--db=unix:{self.layout.sb_sock}",
                          "--columns=name,hostname", "list", "Chassis"], timeout=10)

    def up(self) -> None:
        self.layout.ovn_run.mkdir(parents=True, exist_ok=True)
        for kind, (db, schema, sock, pid, ctl) in self.dbs.items():
            db.parent.mkdir(parents=True, exist_ok=True)
            if not db.exists():
                procs.run(["ovsdb-tool", "create", str(db), str(schema)])
            if not procs.pid_alive(pid, "ovsdb-server"):
                procs.run([
                    "ovsdb-server", str(db), f"--remote=punix:{sock}",
                    f"--pidfile={pid}", f"--unixctl={ctl}", "--detach", "--no-chdir",
                    f"--log-file={self.layout.log('ovsdb-server-' + kind)}",
                ])
        if not procs.pid_alive(self.northd_pid, "ovn-northd"):
            procs.run([
                "ovn-northd", f"--ovnnb-db=unix:{self.layout.nb_sock}",
                f"--ovnsb-db=unix:{self.layout.sb_sock}",
                f"--pidfile={self.northd_pid}", "--detach", "--no-chdir",
                f"--log-file={self.layout.log('ovn-northd')}",
            ])
        if not procs.pid_alive(self.controller_pid, "ovn-controller"):
            procs.run([
                "ovn-controller", f"unix:{self.layout.ovs_db_sock}",
                f"--pidfile={self.controller_pid}", "--detach", "--no-chdir",
                f"--log-file={self.layout.log('ovn-controller')}",
            ])
        if not procs.wait_for(lambda: self.layout.host in self._chassis_names(), 30):
            raise procs.StackError(
                f"ovn-controller did not register chassis {self.layout.host} "
                f"(log: {self.layout.log('ovn-controller')})"
            )

    def down(self) -> None:
        procs.stop(self.controller_pid, "ovn-controller")
        procs.stop(self.northd_pid, "ovn-northd")
        for _, _, _, pid, _ in self.dbs.values():
            procs.stop(pid, "ovsdb-server")

"""Simulated compute hosts (`kuryr-aio host up NAME`): more chassis of the
stack's OVN on this machine, so Kuryr can be tried on several hosts.

A host is not a Neutron port (unlike a VM): it is what a compute node runs.
Its own network namespace (kuryr-host-NAME) and mount namespace held by an
init (kuryr.aio.vm_exec, as a VM's); an API relay for Neutron (and Keystone)
on its 127.0.0.1; its own Open vSwitch (br-int, and br-phy on the underlay,
see kuryr.aio.underlay) and ovn-controller, whose chassis is the host's
hostname and whose tunnel endpoint is its underlay address; its own Kuryr
(port driver veth into its br-int, [DEFAULT] host = its hostname) and dockerd.

`host down` deletes the host (its chassis too) and keeps its files (hostname,
underlay address, Docker's data); `kuryr-aio down` only powers hosts off.
"""

from __future__ import annotations

import shlex
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pyroute2 import netns

from kuryr.aio import links, procs, switch, underlay, vm_neutron
from kuryr.aio.components import safe_problems, say
from kuryr.aio.layout import (
    PRIVATE_DIR_MODE,
    PUBLIC_NETWORK,
    RUN_DIR_MODE,
    UNDERLAY_OVS_BRIDGE,
    HostLayout,
    Layout,
    MachineLayout,
    check_hostname,
    make_dir,
)
from kuryr.aio.outside import stack_neutron
from kuryr.aio.vm import (
    MachineKuryr,
    MachineProcess,
    MachineSwitch,
    VmDockerd,
    VmInit,
    VmPart,
    VmRelay,
    VmStatus,
    bring_up_parts,
    check_stack,
    launcher,
    machine_kuryr_conf,
    machine_names,
    machine_status,
    relay_ports,
    state_lock,
    stop_machines,
    stop_parts,
    switch_files,
)
from kuryr.binding import netlink

# Tap devices the host's userspace datapath makes in its namespace.
HOST_DATAPATH_TAPS = ("ovs-netdev", "br-int", UNDERLAY_OVS_BRIDGE, "genev_sys_6081")


# -- the host's Open vSwitch and ovn-controller -------------------------------

class HostSwitch(MachineSwitch):
    """br-int for OVN, br-phy with the host's end of its underlay veth and its
    underlay address; the chassis' external_ids, set before vswitchd starts."""

    taps = HOST_DATAPATH_TAPS

    def __init__(self, layout: Layout, host: HostLayout, hostname: str, address: str) -> None:
        super().__init__(host)
        self.layout = layout
        self.hostname = hostname
        self.address = address

    def chassis(self) -> dict[str, str]:
        """No bridge mappings, not a gateway: only the main host reaches the
        external network."""
        return switch.chassis_ids(self.layout, self.hostname, self.address.split("/")[0])

    def bridge_problems(self) -> list[str]:
        return [f"OVS bridge {bridge} is missing or not on the netdev datapath"
                for bridge in ("br-int", UNDERLAY_OVS_BRIDGE)
                if switch.bridge_datapath(bridge, db=self.files.db_sock) != "netdev"]

    def configure(self) -> None:
        self.files.set_chassis(self.chassis())

    def make_bridges(self) -> None:
        self.files.ensure_integration_bridge()
        self.files.plug_underlay(self.vm.netns_path, underlay.HOST_END, self.address)


def chassis_names(layout: Layout, hostname: str) -> list[str]:
    """The SB's chassis named ``hostname`` (none or one): an exact match, as
    two hosts' names may share a long prefix."""
    out = procs.run(["ovn-sbctl", "--timeout=5", f"--db=unix:{layout.sb_sock}", "--bare",
                     "--columns=name", "find", "Chassis", f'name="{hostname}"'], timeout=10)
    return out.split()


def ovn_controller_argv(host: MachineLayout, files: switch.SwitchFiles) -> list[str]:
    """In the host's namespaces, in the foreground (the launcher's PID is its
    own: spawn writes its PID file)."""
    return [*launcher(host), "ovn-controller", f"unix:{files.db_sock}", "--no-chdir"]


class HostOvnController(MachineProcess):
    """Answers once its chassis is in the SB (`host up` waits for that)."""

    part = "ovn-controller"

    def __init__(self, layout: Layout, host: HostLayout, hostname: str) -> None:
        super().__init__(host)
        self.layout = layout
        self.hostname = hostname
        self.files = switch_files(host)

    @property
    def expect(self) -> str:
        return f"ovn-controller unix:{self.files.db_sock} "

    def argv(self) -> list[str]:
        return ovn_controller_argv(self.vm, self.files)

    def prepare(self) -> None:
        # A killed one leaves its control socket (named by its PID) behind.
        for stale in self.vm.run.glob("ovn-controller.*.ctl"):
            stale.unlink(missing_ok=True)

    def env(self) -> dict[str, str]:
        """Its control socket (ovn-controller.PID.ctl) in the host's run
        directory, not in the main host's /run/ovn."""
        return {"OVN_RUNDIR": str(self.vm.run)}

    def answers(self) -> bool:
        return self.hostname in chassis_names(self.layout, self.hostname)


# -- the host's Kuryr -------------------------------------------------------

HOST_BINDING = """\
ovs_bridge = br-int

[publish]
# -p ports are also reachable from the external network through a floating IP
# (this host's own; the main host is the gateway).
floating_ip_network = {public}
"""

def kuryr_conf_text(layout: Layout, host: HostLayout, hostname: str) -> str:
    """As the main host's: veth into br-int (the host's own, through its
    /run/openvswitch); its ports bound to ``hostname``, its chassis."""
    return machine_kuryr_conf(layout, host, title=f"host {host.name} (chassis {hostname})",
                              driver="veth", host=hostname,
                              binding=HOST_BINDING.format(public=PUBLIC_NETWORK))


class HostKuryr(MachineKuryr):
    def __init__(self, layout: Layout, host: HostLayout, hostname: str) -> None:
        super().__init__(host)
        self.layout = layout
        self.host = host
        self.hostname = hostname

    def config_text(self) -> str:
        return kuryr_conf_text(self.layout, self.host, self.hostname)


# -- the host's namespace and underlay veth -----------------------------------

class HostUnderlay:
    """Its network namespace, and its veth on the underlay bridge: kul-NAME in
    the root namespace, ul-phy in the host's (a port of its br-phy)."""

    def __init__(self, layout: Layout, host: HostLayout) -> None:
        self.layout = layout
        self.host = host
        self.name = f"{host.label} underlay"

    def present(self) -> bool:
        return self.host.netns in netns.listnetns() and underlay.present(
            self.host.underlay_ifname) and self._has_end()

    def _has_end(self) -> bool:
        with netlink.in_netns(str(self.host.netns_path)) as ns:
            return bool(ns.link_lookup(ifname=underlay.HOST_END))

    def problems(self) -> list[str]:
        if self.host.netns not in netns.listnetns():
            return [f"network namespace {self.host.netns} is missing"]
        if not self.present():
            return [(f"its underlay veth ({self.host.underlay_ifname} / "
                     f"{underlay.HOST_END}) is missing")]
        return []

    def up(self) -> None:
        if self.host.netns not in netns.listnetns():
            netns.create(self.host.netns)
        with netlink.in_netns(str(self.host.netns_path)) as ns:
            ns.link("set", index=ns.link_lookup(ifname="lo")[0], state="up")
        if not self.present():
            # The root end of a veth whose host end went with a deleted namespace.
            links.delete_created(self.layout, [self.host.underlay_ifname])
        underlay.plug(self.layout, self.host.underlay_ifname, underlay.HOST_END,
                      self.host.netns)

    def down(self) -> None:
        links.delete_created(self.layout, [self.host.underlay_ifname])
        if self.host.netns in netns.listnetns():
            netns.remove(self.host.netns)


# -- a host -----------------------------------------------------------------

def hostname_conflicts(hostname: str, main_host: str, others: dict[str, str]) -> str | None:
    """Why ``hostname`` cannot be a new host's (a chassis name is unique), or
    None; ``others``: the other hosts' names -> hostnames."""
    if hostname == main_host:
        return f"{hostname} is the main host's chassis"
    taken = [name for name, other in others.items() if other == hostname]
    return f"host {taken[0]} has hostname {hostname}" if taken else None


def read_text(path: Path) -> str | None:
    try:
        return path.read_text().strip() or None
    except FileNotFoundError:
        return None


class SimulatedHost:
    def __init__(self, layout: Layout, name: str) -> None:
        self.layout = layout
        self.host = layout.sim_host(name)
        self.net = HostUnderlay(layout, self.host)

    @property
    def name(self) -> str:
        return self.host.name

    @property
    def hostname(self) -> str | None:
        """Chosen when the host was made; kept until `host down --purge`."""
        return read_text(self.host.hostname_file)

    @property
    def address(self) -> str | None:
        """Its underlay address (CIDR form), allocated when it was made."""
        return read_text(self.host.underlay_file)

    @property
    def exists(self) -> bool:
        """From `host up` to `host down` (powered off by `kuryr-aio down` or not)."""
        return self.host.up_file.exists()

    def processes(self, hostname: str, address: str = "") -> list[VmPart]:
        """In start order: ovn-controller once its switch is configured; Kuryr
        before dockerd, which asks the plugin about its networks at start and
        while stopping containers."""
        host, layout = self.host, self.layout
        return [VmInit(host), VmRelay(host, relay_ports(layout)),
                HostSwitch(layout, host, hostname, address),
                HostOvnController(layout, host, hostname),
                HostKuryr(layout, host, hostname), VmDockerd(host)]

    def up(self, hostname: str | None = None, log: Callable[[str], None] = say) -> None:
        """Make what is missing, start what is not running (what runs stays)."""
        started = time.monotonic()
        check_stack(self.layout)
        make_dir(self.host.state, PRIVATE_DIR_MODE)
        make_dir(self.host.run, RUN_DIR_MODE)
        with state_lock(self.layout.hosts_state):  # hostnames and addresses are unique
            hostname, address = self._claim(hostname)
            self.host.up_file.touch()
        if not self.net.present() or not VmInit(self.host).running():
            # Crashed (or half made): what still runs of it is in namespaces
            # that the new ones would not be; it starts again as a whole.
            stop_parts(self.processes(hostname, address), log)
        self.net.up()
        kuryr_failed = bring_up_parts(self.processes(hostname, address), log)
        log(f"host {self.name} (chassis {hostname}, underlay {address}) is up in "
            f"{time.monotonic() - started:.1f} s; "
            f'use it with: eval "$(kuryr-aio host env {self.name})"')
        if kuryr_failed is not None:
            raise procs.StackError(f"host {self.name}: all is up but its Kuryr: {kuryr_failed}")

    def _claim(self, asked: str | None) -> tuple[str, str]:
        """Its hostname and underlay address: those it has, or new ones (under
        the hosts' lock)."""
        current = self.hostname
        if asked is not None:
            check_hostname(asked)
        if current is not None and asked is not None and asked != current:
            raise procs.StackError(f"host {self.name} has hostname {current}: "
                                   f"`kuryr-aio host down {self.name} --purge` it first")
        hostname = current or asked or self.name
        others = {other.name: other for other in all_hosts(self.layout)
                  if other.name != self.name}
        if current is None:
            conflict = hostname_conflicts(
                hostname, self.layout.host,
                {name: other.hostname for name, other in others.items() if other.hostname})
            if conflict:
                raise procs.StackError(f"host {self.name}: hostname taken ({conflict})")
            self.host.hostname_file.write_text(f"{hostname}\n")
        address = self.address
        if address is None or not underlay.within(address):  # made on an older prefix
            address = underlay.allocate(other.address for other in others.values()
                                        if other.address)
            self.host.underlay_file.write_text(f"{address}\n")
        return hostname, address

    def power_off(self, log: Callable[[str], None] = say) -> None:
        """Stop its processes (dockerd first), remove its namespace and
        underlay veth; its chassis and files stay.  Works on a half-made host."""
        stop_parts(self.processes(self.hostname or self.name, self.address or ""), log)
        self.net.down()

    def delete(self, purge: bool = False, log: Callable[[str], None] = say) -> None:
        """Power off and delete its chassis from the SB; ``purge`` wipes its
        files (Docker's data, its hostname and underlay address)."""
        self.power_off(log)
        hostname = self.hostname
        if hostname is not None:
            procs.run(["ovn-sbctl", "--timeout=5", f"--db=unix:{self.layout.sb_sock}",
                       "--if-exists", "chassis-del", hostname], timeout=10, check=False)
        self.host.up_file.unlink(missing_ok=True)
        if purge and hostname is not None:
            self._delete_neutron_leftovers(hostname, log)
        if purge:
            shutil.rmtree(self.host.state, ignore_errors=True)
            shutil.rmtree(self.host.run, ignore_errors=True)
        log(f"host {self.name} is gone" + (" (files wiped)" if purge else ""))

    def _delete_neutron_leftovers(self, hostname: str, log: Callable[[str], None]) -> None:
        """Its Docker data goes: nothing would remove what its Kuryr made."""
        neutron = stack_neutron(self.layout)
        try:
            for what in vm_neutron.delete_host_leftovers(neutron.api, hostname):
                log(f"host {self.name}: deleted {what}")
        except Exception as exc:
            raise procs.StackError(f"host {self.name}: stopped, but what its Kuryr left in "
                                   f"Neutron was not deleted: {exc}") from exc
        finally:
            neutron.close()

    def problems(self) -> list[str]:
        found = self.net.problems()
        return found + [problem for part in self.processes(self.hostname or self.name,
                                                           self.address or "")
                        for problem in safe_problems(part)]

    def powered_off(self) -> bool:
        running = [part for part in self.processes(self.hostname or self.name)
                   if part.running()]
        return not running and self.host.netns not in netns.listnetns()

    def env_exports(self) -> str:
        hostname, address = self.hostname, self.address
        if hostname is None or address is None:
            raise procs.StackError(f"host {self.name} does not exist "
                                   f"(`kuryr-aio host up {self.name}` makes it)")
        host = self.host
        lines = {
            "DOCKER_HOST": host.docker_host,
            "KURYR_HOST_NAME": hostname,
            "KURYR_HOST_NETNS": host.netns,
            # A command inside the host (its namespaces): $KURYR_HOST_EXEC ip addr
            "KURYR_HOST_EXEC": shlex.join(launcher(host)),
            # Its daemons, for tests that kill or inspect them.
            "KURYR_HOST_KURYR_PIDFILE": str(host.pidfile(HostKuryr.part)),
            "KURYR_HOST_DOCKERD_PIDFILE": str(host.pidfile(VmDockerd.part)),
            "KURYR_HOST_OVN_CONTROLLER_PIDFILE": str(host.pidfile(HostOvnController.part)),
            "KURYR_HOST_KURYR_CONF": str(host.kuryr_conf),
            "KURYR_HOST_UNDERLAY_IP": address.split("/")[0],
        }
        return "".join(f"export {key}={shlex.quote(value)}\n" for key, value in lines.items())


# -- every host of the stack -------------------------------------------------

def all_hosts(layout: Layout) -> list[SimulatedHost]:
    """Hosts with files (existing, deleted without --purge, or half made)."""
    return [SimulatedHost(layout, name)
            for name in machine_names(layout.hosts_state, layout.hosts_run)]


def stop_all(layout: Layout, purge: bool, log: Callable[[str], None] = say) -> None:
    stop_machines("host", all_hosts(layout), purge, log, (layout.hosts_state, layout.hosts_run))


@dataclass(frozen=True)
class HostStatus(VmStatus):
    kind = "host"


def status(layout: Layout) -> list[VmStatus]:
    return [HostStatus(*machine_status(host, host.hostname or host.name))
            for host in all_hosts(layout) if host.exists]

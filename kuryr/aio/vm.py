"""Simulated OpenStack VMs (`kuryr-aio vm up NAME`), whose containers Kuryr
networks in nested mode.

A VM is what Nova would make: a Neutron port (device_owner compute:nova, bound
to this host; in vlan mode the parent of a trunk) and a NIC plugged into br-int
for it.  Inside: its own network namespace (eth0 = the NIC), its own mount
namespace (Docker plugin directories, /run/openvswitch, /run/containerd of
its own: see kuryr.aio.vm_exec), held by an init process; an API relay
(kuryr.aio.vm_relay) for Neutron on 127.0.0.1:9696 as on the host; in vlan
mode its own Open vSwitch (bridge br-vm, eth0 a trunk port carrying every
VLAN, the VM's address on br-vm); Kuryr with a nested port driver; its own
dockerd.

`vm down` deletes the VM as Nova's delete would (and what its nested Kuryr
left in Neutron); `kuryr-aio down` only powers VMs off (their Neutron ports
stay, a later `vm up` starts them again).
"""

from __future__ import annotations

import contextlib
import fcntl
import shlex
import shutil
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, Protocol

from pyroute2 import IPRoute, netns

from kuryr.aio import docker, keystone, links, namespaces, procs, switch, vm_neutron
from kuryr.aio.components import Component, bring_up, safe_problems, say
from kuryr.aio.layout import (
    KEYSTONE_PORT,
    NEUTRON_PORT,
    PRIVATE_DIR_MODE,
    RUN_DIR_MODE,
    VM_MODES,
    Layout,
    MachineLayout,
    VmLayout,
    make_dir,
)
from kuryr.aio.neutron_server import NeutronServer
from kuryr.aio.outside import stack_neutron
from kuryr.aio.plugin import config_differs, neutron_section_of, plugin_answers, write_config
from kuryr.aio.vm_exec import init_expect
from kuryr.aio.vm_neutron import VmPort
from kuryr.binding import netlink

if TYPE_CHECKING:
    from openstack.network.v2._proxy import Proxy as NetworkProxy

NIC = "eth0"  # the VM's end of its NIC
BRIDGE = "br-vm"  # vlan mode: the VM's own Open vSwitch bridge
# Tap devices the VM's userspace datapath makes (in the VM's namespace) and
# leaves behind when it dies; a new ovs-vswitchd cannot make its bridge then.
VM_DATAPATH_TAPS = ("ovs-netdev", BRIDGE)
PORT_DRIVERS = {"vlan": "nested-vlan", "macvlan": "nested-macvlan"}
START_TIMEOUT = 60.0


# -- what each process of a machine (VM, host) runs (argv lists, no shell) --

def launcher(vm: MachineLayout) -> list[str]:
    """The prefix that runs a command inside the machine (its init's namespaces)."""
    return [sys.executable, "-m", "kuryr.aio.vm_exec", "run", vm.netns,
            "--run-dir", str(vm.run), "--"]


def init_argv(vm: MachineLayout) -> list[str]:
    return [sys.executable, "-m", "kuryr.aio.vm_exec", "hold", vm.netns, "--run-dir", str(vm.run)]


def relay_ports(layout: Layout) -> list[int]:
    """The host's API ports a VM's Kuryr talks to: Neutron's, and Keystone's
    in keystone mode."""
    return [NEUTRON_PORT, *([KEYSTONE_PORT] if layout.keystone_mode else [])]


def relay_argv(vm: MachineLayout, ports: list[int]) -> list[str]:
    """Started in the host's namespaces: it listens in the machine's."""
    return [sys.executable, "-m", "kuryr.aio.vm_relay", vm.netns,
            "--netns", str(vm.netns_path), *(f"--port={port}" for port in ports)]


def kuryr_argv(vm: MachineLayout) -> list[str]:
    return [*launcher(vm), sys.executable, "-m", "kuryr.cli", "serve",
            "--config-file", str(vm.kuryr_conf)]


def dockerd_argv(vm: MachineLayout) -> list[str]:
    # No default bridge: the machine's containers are on Kuryr's networks only.
    # Its own exec-root: its containers' namespaces, runc's state and (as
    # /run/containerd is the machine's, empty) its own containerd are under it.
    return [*launcher(vm), *docker.dockerd_argv(
        data_root=vm.state / "docker", pidfile=vm.run / "dockerd.docker.pid",
        docker_host=vm.docker_host, exec_root=vm.docker_exec_root, bridge="none")]


def switch_files(vm: MachineLayout) -> switch.SwitchFiles:
    return switch.SwitchFiles(db=vm.state / "ovs" / "conf.db", run_dir=vm.ovs_run,
                              db_log=vm.log("ovsdb-server"), switch_log=vm.log("ovs-vswitchd"),
                              launcher=tuple(launcher(vm)))


KURYR_CONF = """\
# Written by kuryr-aio: the Kuryr of simulated {title}, against the
# stack's {against} through the {word}'s API relay (127.0.0.1 in the {word}).
[DEFAULT]
port_driver = {driver}
host = {host}
kuryr_uri = unix:///run/docker/plugins/kuryr.sock
docker_uri = {docker_host}
state_dir = {state}
docker_netns_dir = {netns}

{neutron_section}
[binding]
{binding}"""

VLAN_OPTIONS = """\
# The VM's own Open vSwitch tags each container's frames (this kernel has no
# 802.1Q devices): an access port tag=<sub-port's VLAN> on {bridge}.
vlan_tagging = ovs
ovs_bridge = {bridge}
"""

MACVLAN_OPTIONS = """\
# The VM routes to each container's veth and answers ARP for it on {nic} (this
# kernel has no ipvlan devices).
pairs_device = routed-veth
"""


def binding_options(mode: str) -> str:
    """[binding] options of the mode, past link_iface."""
    if mode == "vlan":
        return VLAN_OPTIONS.format(bridge=BRIDGE)
    return MACVLAN_OPTIONS.format(nic=NIC)


def machine_kuryr_conf(layout: Layout, machine: MachineLayout, *, title: str, driver: str,
                       host: str, binding: str) -> str:
    """kuryr.conf of a machine's Kuryr: its own Docker and state, the stack's
    Neutron through the machine's relay; ``binding`` is [binding]'s body."""
    against, neutron_section = neutron_section_of(layout)
    return KURYR_CONF.format(
        title=title, word="VM" if machine.kind == "vm" else machine.kind, against=against,
        driver=driver, host=host, docker_host=machine.docker_host,
        state=machine.state / "kuryr", netns=machine.docker_netns_dir,
        neutron_section=neutron_section, binding=binding)


def kuryr_conf_text(layout: Layout, vm: VmLayout, mode: str) -> str:
    driver = PORT_DRIVERS[mode]
    return machine_kuryr_conf(layout, vm, title=f"VM {vm.name} ({driver})", driver=driver,
                              host=vm_neutron.kuryr_host(vm),
                              binding=f"link_iface = {NIC}\n{binding_options(mode)}")


# -- a machine's processes (a VM's, a host's) -------------------------------

class MachineProcess:
    """One foreground process of a machine, started by `KIND up`, stopped by PID."""

    part = ""
    stop_timeout = 20.0

    def __init__(self, vm: MachineLayout) -> None:
        self.vm = vm
        self.name = f"{vm.label} {self.part}"
        self.pidfile = vm.pidfile(self.part)

    @property
    def logs(self) -> list[Path]:
        return [self.vm.log(self.part)]

    @property
    def expect(self) -> str:
        """What its command line holds (checked before it is trusted or killed)."""
        raise NotImplementedError

    def argv(self) -> list[str]:
        raise NotImplementedError

    def answers(self) -> bool:
        raise NotImplementedError

    def prepare(self) -> None:
        """Files it needs, before it starts."""

    def env(self) -> dict[str, str]:
        """Its environment, past kuryr-aio's."""
        return {}

    def outdated(self) -> bool:
        """Whether it runs with a configuration the stack no longer has."""
        return False

    def running(self) -> bool:
        return procs.pid_alive(self.pidfile, self.expect)

    def problems(self) -> list[str]:
        if not self.running():
            return [f"{self.part} is not running"]
        try:
            if not self.answers():
                return [f"{self.part} does not answer"]
        except Exception as exc:  # noqa: BLE001 - any failure is the answer
            return [f"{self.part} does not answer: {exc}"]
        if self.outdated():
            return [(f"{self.part} runs with an outdated configuration "
                     f"(`{self.vm.kind} up` restarts it)")]
        return []

    def up(self) -> None:
        if self.running() and self.outdated():
            self.down()
        if not self.running():
            self.prepare()
            procs.spawn(self.argv(), pidfile=self.pidfile, log=self.logs[0], env=self.env())
        if not procs.wait_for(procs.answers_or_died(self.pidfile, self._answers),
                              START_TIMEOUT):
            raise procs.StackError(f"{self.part} did not answer in {START_TIMEOUT:.0f} s "
                                   f"(log: {self.logs[0]})")
        if not procs.running(self.pidfile):
            raise procs.StackError(f"{self.part} exited at start (log: {self.logs[0]})")

    def _answers(self) -> bool:
        try:
            return self.answers()
        except Exception:  # noqa: BLE001 - not yet
            return False

    def down(self) -> bool:
        return procs.stop(self.pidfile, self.expect, timeout=self.stop_timeout)


class VmInit(MachineProcess):
    """Holds the machine's namespaces; every other process of it enters them."""

    part = "init"

    @property
    def expect(self) -> str:
        return init_expect(self.vm.netns)

    def argv(self) -> list[str]:
        return init_argv(self.vm)

    def prepare(self) -> None:
        self.vm.init_ready.unlink(missing_ok=True)

    def answers(self) -> bool:
        """Its namespaces are complete once it wrote its PID (in the ready file)."""
        return self.vm.init_ready.read_text().split() == [str(procs.read_pid(self.pidfile))]


class VmRelay(MachineProcess):
    part = "relay"

    def __init__(self, vm: MachineLayout, ports: list[int]) -> None:
        super().__init__(vm)
        self.ports = ports

    @property
    def expect(self) -> str:
        return f"kuryr.aio.vm_relay {self.vm.netns} "

    def argv(self) -> list[str]:
        return relay_argv(self.vm, self.ports)

    def answers(self) -> bool:
        return all(namespaces.connects(self.vm.netns_path, port) for port in self.ports)

    def outdated(self) -> bool:
        """Keystone's port came or went with the auth mode."""
        return procs.cmdline(self.pidfile) != " ".join(self.argv()) + " "


class MachineKuryr(MachineProcess):
    """The machine's Kuryr; what its kuryr.conf says is the kind's."""

    part = "kuryr"
    stop_timeout = 15.0

    @property
    def expect(self) -> str:
        return f"kuryr.cli serve --config-file {self.vm.kuryr_conf} "

    def argv(self) -> list[str]:
        return kuryr_argv(self.vm)

    def config_text(self) -> str:
        raise NotImplementedError

    def prepare(self) -> None:
        write_config(self.vm.kuryr_conf, self.config_text())
        # A socket left by a killed Kuryr refuses connections until replaced.
        self.vm.plugin_socket.unlink(missing_ok=True)

    def outdated(self) -> bool:
        return config_differs(self.vm.kuryr_conf, self.config_text())

    def answers(self) -> bool:
        return plugin_answers(self.vm.plugin_socket)


class VmKuryr(MachineKuryr):
    def __init__(self, layout: Layout, vm: VmLayout, mode: str) -> None:
        super().__init__(vm)
        self.layout = layout
        self.mode = mode
        self.vm_layout = vm

    def config_text(self) -> str:
        return kuryr_conf_text(self.layout, self.vm_layout, self.mode)


class VmDockerd(MachineProcess):
    part = "dockerd"
    stop_timeout = 40.0  # it stops its containers first (through the machine's Kuryr)

    @property
    def expect(self) -> str:
        return f"--host={self.vm.docker_host} "

    def argv(self) -> list[str]:
        return dockerd_argv(self.vm)

    def prepare(self) -> None:
        self.vm.docker_sock.unlink(missing_ok=True)

    def answers(self) -> bool:
        return docker.answers(self.vm.docker_host)

    def problems(self) -> list[str]:
        return super().problems() or (
            [] if docker.has_image(self.vm.docker_host) else [f"image {docker.IMAGE} is missing"])

    def up(self) -> None:
        super().up()
        if not docker.has_image(self.vm.docker_host):
            docker.import_busybox(self.vm.docker_host, self.vm.state)


class MachineSwitch:
    """A machine's own Open vSwitch (userspace datapath in its namespaces):
    started, then its bridges made by the kind (``make_bridges``)."""

    # Tap devices its datapath makes (in the machine's namespace) and leaves
    # behind when it dies; a new ovs-vswitchd cannot make its bridges then.
    taps: tuple[str, ...] = ()

    def __init__(self, vm: MachineLayout) -> None:
        self.vm = vm
        self.name = f"{vm.label} openvswitch"
        self.files = switch_files(vm)

    @property
    def logs(self) -> list[Path]:
        return self.files.logs

    def bridge_problems(self) -> list[str]:
        raise NotImplementedError

    def problems(self) -> list[str]:
        return self.files.process_problems() or self.bridge_problems()

    def configure(self) -> None:
        """What must be in its database before ovs-vswitchd starts."""

    def make_bridges(self) -> None:
        raise NotImplementedError

    def up(self) -> None:
        self.files.start_database()
        self.configure()
        if not self.files.switch_running():
            switch.delete_taps(self.vm.netns_path, self.taps)
        self.files.start_switch()
        self.make_bridges()

    def running(self) -> bool:
        return (procs.pid_alive(self.files.db_pid, "ovsdb-server")
                or self.files.switch_running())

    def down(self) -> None:
        self.files.stop()


class VmSwitch(MachineSwitch):
    """vlan mode: the VM's own Open vSwitch; eth0 on br-vm with no tag (a trunk
    port: every VLAN), the VM's address on br-vm, which has the port's MAC."""

    taps = VM_DATAPATH_TAPS

    def __init__(self, vm: VmLayout, port: VmPort | None = None) -> None:
        super().__init__(vm)
        self.port = port

    def bridge_problems(self) -> list[str]:
        if switch.bridge_datapath(BRIDGE, db=self.files.db_sock) != "netdev":
            return [f"OVS bridge {BRIDGE} is missing or not on the netdev datapath"]
        return []

    def _port(self) -> VmPort:
        if self.port is None:
            raise procs.StackError("the VM's Neutron port is not known")
        return self.port

    def up(self) -> None:
        self._port()  # before anything starts
        super().up()

    def make_bridges(self) -> None:
        port = self._port()
        # The bridge's own interface speaks for the VM: the port's MAC, or port
        # security drops its frames.
        self.files.ensure_netdev_bridge(BRIDGE, f'other-config:hwaddr="{port.mac}"')
        self.files.vsctl("--may-exist", "add-port", BRIDGE, NIC, "--",
                         "set", "Interface", BRIDGE, f"mtu_request={port.mtu}")
        namespaces.write_sysctls(self.vm.netns_path, namespaces.bridge_port_sysctls(NIC))
        switch.address_on(self.vm.netns_path, BRIDGE, port.address)


VmPart = MachineProcess | MachineSwitch


# -- the VM's NIC -----------------------------------------------------------

class VmNic:
    """A veth pair: kvm-NAME on the host's br-int, bound to the VM's Neutron
    port; eth0 in the VM's network namespace, with the port's MAC."""

    def __init__(self, layout: Layout, vm: VmLayout) -> None:
        self.layout = layout
        self.vm = vm
        self.name = f"vm {vm.name} nic"

    @property
    def logs(self) -> list[Path]:
        return []

    def present(self) -> bool:
        """The namespace and both ends of the NIC exist."""
        return (self.vm.netns in netns.listnetns()
                and netlink.link_exists(self.vm.host_ifname) and self._has_nic())

    def problems(self) -> list[str]:
        if self.vm.netns not in netns.listnetns():
            return [f"network namespace {self.vm.netns} is missing"]
        if not self.present():
            return [f"the VM's NIC ({self.vm.host_ifname} / {NIC}) is missing"]
        if namespaces.tx_checksum(self.vm.netns_path, NIC):
            return [(f"{NIC} has tx checksum offload on (TCP through the userspace "
                     "datapath fails): `vm up` turns it off")]
        return []

    def up(self, port: VmPort, address: bool) -> None:
        """``address``: the VM's address on eth0 itself (macvlan mode)."""
        self.discard_half_made()
        if self.vm.netns not in netns.listnetns():
            netns.create(self.vm.netns)
        if not netlink.link_exists(self.vm.host_ifname):
            self._make_veth(port)
        with netlink.in_netns(str(self.vm.netns_path)) as ns:
            idx = ns.link_lookup(ifname=NIC)[0]
            # A powered-off VM keeps its port (and MAC); a new port has another.
            ns.link("set", index=idx, address=port.mac, mtu=port.mtu, state="up")
            ns.link("set", index=ns.link_lookup(ifname="lo")[0], state="up")
        namespaces.disable_tx_checksum(self.vm.netns_path, NIC)
        if address:
            switch.address_on(self.vm.netns_path, NIC, port.address)
        self._plug(port)

    def discard_half_made(self) -> None:
        """The host end of a NIC whose VM end is gone (its namespace was deleted
        under a running VM: the pair lives on in the orphaned namespace while
        the VM's processes do), and its br-int port, which keeps the Neutron
        port ACTIVE (seen: 30 s and more) even once the device is gone."""
        if self.present():
            return
        switch.vsctl("--if-exists", "del-port", "br-int", self.vm.host_ifname)
        links.delete_created(self.layout, [self.vm.host_ifname])

    def _has_nic(self) -> bool:
        with netlink.in_netns(str(self.vm.netns_path)) as ns:
            return bool(ns.link_lookup(ifname=NIC))

    def _make_veth(self, port: VmPort) -> None:
        with IPRoute() as ipr:
            ipr.link("add", ifname=self.vm.host_ifname, kind="veth", mtu=port.mtu,
                     peer={"ifname": NIC, "address": port.mac, "mtu": port.mtu,
                           "net_ns_fd": self.vm.netns})
            links.record(self.layout, [self.vm.host_ifname])
            # The host end needs no address of its own (no IPv6 from the VM's RAs).
            netlink.deafen_to_ipv6(self.vm.host_ifname)
            ipr.link("set", index=ipr.link_lookup(ifname=self.vm.host_ifname)[0], state="up")

    def _plug(self, port: VmPort) -> None:
        """As Nova's os-vif plugs a VM's tap: OVN binds the interface by iface-id.
        Not Kuryr's OVS.plug: it marks interfaces kuryr-managed, which the host's
        Kuryr would garbage-collect (the port is not Kuryr's)."""
        ifname = self.vm.host_ifname
        switch.vsctl("--may-exist", "add-port", "br-int", ifname, "--",
                     "set", "Interface", ifname, f'external_ids:iface-id="{port.id}"',
                     f'external_ids:attached-mac="{port.mac}"',
                     'external_ids:iface-status="active"',
                     f'external_ids:kuryr-aio-vm="{self.vm.name}"')

    def down(self) -> None:
        # Even with the device gone: the port row alone keeps Neutron's port ACTIVE.
        switch.vsctl("--if-exists", "del-port", "br-int", self.vm.host_ifname)
        links.delete_created(self.layout, [self.vm.host_ifname])
        if self.vm.netns in netns.listnetns():
            netns.remove(self.vm.netns)


# -- a VM -------------------------------------------------------------------

class VirtualMachine:
    def __init__(self, layout: Layout, name: str) -> None:
        self.layout = layout
        self.vm = layout.vm(name)
        self.nic = VmNic(layout, self.vm)

    @property
    def name(self) -> str:
        return self.vm.name

    @property
    def mode(self) -> str | None:
        """The VM's mode while it exists (from `vm up` to `vm down`)."""
        try:
            return self.vm.mode_file.read_text().strip()
        except FileNotFoundError:
            return None

    @property
    def exists(self) -> bool:
        return self.mode is not None

    def processes(self, mode: str, port: VmPort | None = None) -> list[VmPart]:
        """In start order: the VM's Kuryr before its dockerd, which asks the
        plugin about its networks at start and while stopping containers."""
        vm = self.vm
        own_switch: list[VmPart] = [VmSwitch(vm, port)] if mode == "vlan" else []
        return [VmInit(vm), VmRelay(vm, relay_ports(self.layout)), *own_switch,
                VmKuryr(self.layout, vm, mode), VmDockerd(vm)]

    def up(self, mode: str | None = None, log: Callable[[str], None] = say) -> None:
        """Make what is missing, start what is not running; Kuryr failing to
        start is reported last, after the rest (dockerd too) is up."""
        started = time.monotonic()
        mode = self._choose_mode(mode)
        self._check_stack()
        make_dir(self.vm.state, PRIVATE_DIR_MODE)
        make_dir(self.vm.run, RUN_DIR_MODE)
        self.vm.mode_file.write_text(f"{mode}\n")
        if not self.nic.present() or not VmInit(self.vm).running():
            # Crashed (or half made): what still runs of it is in namespaces
            # that the new ones would not be; it starts again as a whole.
            self._stop_processes(mode, log)
        with self._neutron() as api:
            with self._lock():  # other `vm up`s make the same network, record links
                port = self._ensure_neutron(api, mode)
            log(f"vm {self.name}: Neutron port {port.id} ({port.address}, {port.mac})")
            took = self._plug(api, port, mode)
            log(f"vm {self.name}: NIC {self.vm.host_ifname} plugged, port ACTIVE ({took:.1f} s)")
        kuryr_failed = bring_up_parts(self.processes(mode, port), log)
        log(f"vm {self.name} ({mode}) is up in {time.monotonic() - started:.1f} s; "
            f'use it with: eval "$(kuryr-aio vm env {self.name})"')
        if kuryr_failed is not None:
            raise procs.StackError(f"vm {self.name}: all is up but its Kuryr: {kuryr_failed}")

    def _plug(self, api: NetworkProxy, port: VmPort, mode: str) -> float:
        """The VM's NIC, plugged and its port ACTIVE (which a nested Kuryr
        checks at start); returns how long that took."""
        t0 = time.monotonic()
        if not self.nic.present():
            # Just powered off (or crashed): Neutron may not have seen the old
            # NIC go yet, and an ACTIVE now would be that one's (a nested Kuryr
            # seeing it turn DOWN next refuses to start).
            with self._lock():
                self.nic.discard_half_made()
            vm_neutron.wait_not_active(api, port.id)
        with self._lock():
            self.nic.up(port, address=mode == "macvlan")
        if not vm_neutron.wait_active(api, port.id):
            raise procs.StackError(
                f"vm {self.name}: Neutron port {port.id} is not ACTIVE after "
                f"{vm_neutron.PORT_ACTIVE_TIMEOUT:.0f} s (log: "
                f"{self.layout.log('ovn-controller')})")
        return time.monotonic() - t0

    def _choose_mode(self, asked: str | None) -> str:
        current = self.mode
        mode = asked or current or "vlan"
        if mode not in VM_MODES:
            raise procs.StackError(f"unknown VM mode {mode!r} (one of {', '.join(VM_MODES)})")
        if current is not None and mode != current:
            raise procs.StackError(f"vm {self.name} exists in {current} mode: "
                                   f"`kuryr-aio vm down {self.name}` it first")
        return mode

    def _check_stack(self) -> None:
        check_stack(self.layout)

    @contextlib.contextmanager
    def _neutron(self) -> Iterator[NetworkProxy]:
        neutron = stack_neutron(self.layout)
        try:
            yield neutron.api
        finally:
            neutron.close()

    def _project_id(self) -> str | None:
        """In keystone mode, Kuryr's project (its user runs the VM's Kuryr)."""
        if not self.layout.keystone_mode:
            return None
        try:
            return keystone.service_project_file(self.layout).read_text().strip()
        except FileNotFoundError:
            return None

    def _ensure_neutron(self, api: NetworkProxy, mode: str) -> VmPort:
        project = self._project_id()
        port = vm_neutron.ensure_port(api, self.vm, self.layout.host, project)
        if mode == "vlan":
            vm_neutron.ensure_trunk(api, self.vm, port.id, project)
        return port

    def power_off(self, log: Callable[[str], None] = say) -> None:
        """Stop its processes (dockerd first: its containers end through the
        VM's Kuryr, still running) and remove its NIC and namespace; its
        Neutron port stays.  Works on a half-made VM."""
        self._stop_processes(self.mode or "vlan", log)
        with self._lock():
            self.nic.down()

    def _stop_processes(self, mode: str, log: Callable[[str], None]) -> None:
        stop_parts(self.processes(mode), log)

    def _lock(self) -> contextlib.AbstractContextManager[None]:
        """One VM at a time finds-or-makes the shared Neutron network and group."""
        return state_lock(self.layout.vms_state)

    def delete(self, purge: bool = False, log: Callable[[str], None] = say) -> None:
        """Power off, then delete it from Neutron (as Nova's delete, and what its
        nested Kuryr left); ``purge`` wipes its files, and so the Neutron
        networks of its Docker networks."""
        self.power_off(log)
        neutron_error = None
        try:
            with self._neutron() as api:
                deleted = vm_neutron.delete_vm(api, self.vm)
                if purge:
                    deleted += vm_neutron.delete_vm_networks(api, self.vm)
                for what in deleted:
                    log(f"vm {self.name}: deleted {what}")
        except Exception as exc:  # noqa: BLE001 - the local part is done; reported below
            neutron_error = exc
        self.vm.mode_file.unlink(missing_ok=True)
        if purge:
            shutil.rmtree(self.vm.state, ignore_errors=True)
            shutil.rmtree(self.vm.run, ignore_errors=True)
        if neutron_error is not None:
            raise procs.StackError(f"vm {self.name}: stopped, but Neutron's resources were "
                                   f"not deleted: {neutron_error}")
        log(f"vm {self.name} is gone" + (" (files wiped)" if purge else ""))

    def problems(self) -> list[str]:
        mode = self.mode or "vlan"
        # Each problem names its part ("dockerd is not running"): the status
        # line names the VM.
        found = [*self.nic.problems()]
        found += [problem for part in self.processes(mode) for problem in safe_problems(part)]
        try:
            with self._neutron() as api:
                status = vm_neutron.port_status(api, self.vm)
        except Exception as exc:  # noqa: BLE001 - reported, not raised
            return [*found, f"cannot check its Neutron port: {exc}"]
        if status is None:
            found.append(f"Neutron port {self.vm.neutron_name} is missing")
        elif status != "ACTIVE":
            found.append(f"Neutron port {self.vm.neutron_name} is {status}, not ACTIVE")
        return found

    def powered_off(self) -> bool:
        """Nothing of it runs (as `kuryr-aio down` leaves it)."""
        running = [part for part in self.processes(self.mode or "vlan") if part.running()]
        return not running and self.vm.netns not in netns.listnetns()

    def env_exports(self) -> str:
        lines = {
            "DOCKER_HOST": self.vm.docker_host,
            "KURYR_VM_NETNS": self.vm.netns,
            # A command inside the VM (its namespaces): $KURYR_VM_EXEC ip addr
            "KURYR_VM_EXEC": shlex.join(launcher(self.vm)),
            # The VM's Kuryr, for tests that kill or inspect it.
            "KURYR_VM_KURYR_PIDFILE": str(self.vm.pidfile(VmKuryr.part)),
            "KURYR_VM_KURYR_CONF": str(self.vm.kuryr_conf),
        }
        return "".join(f"export {key}={shlex.quote(value)}\n" for key, value in lines.items())


def stack_parts(layout: Layout) -> list[Component]:
    """What a VM needs of the stack: Neutron makes its port, Open vSwitch and
    OVN bind it.  (A simulated host: its OVN, Neutron for its Kuryr, the
    underlay that the main Open vSwitch joins.)"""
    return [switch.OpenVSwitch(layout), switch.OVN(layout), NeutronServer(layout)]


def check_stack(layout: Layout) -> None:
    found = [f"{part.name}: {problem}" for part in stack_parts(layout)
             for problem in safe_problems(part)]
    if found:
        raise procs.StackError("the stack is not up (`kuryr-aio up` first): " + "; ".join(found))


def bring_up_parts(parts: list[VmPart],
                   log: Callable[[str], None]) -> procs.StackError | None:
    """A machine's parts up in order; Kuryr failing to start is returned (to be
    reported last), the rest (its dockerd too) still comes up."""
    kuryr_failed: procs.StackError | None = None
    for part in parts:
        try:
            bring_up(part, log)
        except procs.StackError as exc:
            if not isinstance(part, MachineKuryr):
                raise
            kuryr_failed = exc
            log(f"{exc}; going on without it")
    return kuryr_failed


def stop_parts(parts: list[VmPart], log: Callable[[str], None]) -> None:
    """A machine's parts stopped in reverse start order (dockerd first: its
    containers end through the machine's Kuryr, still running)."""
    for part in reversed(parts):
        try:
            part.down()
        except Exception as exc:  # noqa: BLE001 - keep stopping the rest
            log(f"{part.name}: stop failed: {exc}")


@contextlib.contextmanager
def state_lock(directory: Path) -> Iterator[None]:
    """One `KIND up` / `KIND down` at a time in what machines of a kind share."""
    directory.mkdir(parents=True, exist_ok=True)
    with (directory / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


# -- every VM of the stack --------------------------------------------------

def machine_names(*bases: Path) -> list[str]:
    """Machines with files under ``bases`` (existing or deleted without
    --purge, or half made)."""
    found = {path.name for base in bases if base.is_dir()
             for path in base.iterdir() if path.is_dir()}
    return sorted(found)


def names(layout: Layout) -> list[str]:
    return machine_names(layout.vms_state, layout.vms_run)


def existing(layout: Layout) -> list[VirtualMachine]:
    """VMs made by `vm up` and not deleted by `vm down`."""
    vms = [VirtualMachine(layout, name) for name in names(layout)]
    return [vm for vm in vms if vm.mode is not None]


class Machine(Protocol):
    """What `kuryr-aio down` and `status` do with a simulated machine."""

    @property
    def name(self) -> str: ...

    @property
    def exists(self) -> bool: ...

    def powered_off(self) -> bool: ...

    def power_off(self, log: Callable[[str], None] = say) -> None: ...

    def delete(self, purge: bool = False, log: Callable[[str], None] = say) -> None: ...

    def problems(self) -> list[str]: ...


def stop_machines(kind: str, machines: Iterable[Machine], purge: bool,
                  log: Callable[[str], None], dirs: Iterable[Path]) -> None:
    """`kuryr-aio down`: every machine of a kind powered off (before the host's
    Kuryr and dockerd stop); with ``purge`` deleted, and ``dirs`` wiped."""
    for machine in machines:
        try:
            if purge:
                machine.delete(purge=True, log=log)
            elif machine.exists and not machine.powered_off():
                machine.power_off(log)
                log(f"{kind} {machine.name} powered off (`kuryr-aio {kind} up "
                    f"{machine.name}` starts it again)")
        except Exception as exc:  # noqa: BLE001 - keep stopping the rest
            log(f"{kind} {machine.name}: stop failed: {exc}")
    if purge:
        for directory in dirs:
            shutil.rmtree(directory, ignore_errors=True)


def stop_all(layout: Layout, purge: bool, log: Callable[[str], None] = say) -> None:
    stop_machines("vm", (VirtualMachine(layout, name) for name in names(layout)), purge, log,
                  (layout.vms_state, layout.vms_run))


@dataclass(frozen=True)
class VmStatus:
    """A status line's worth of a machine (the VM's; HostStatus for hosts)."""

    kind: ClassVar[str] = "vm"
    name: str
    detail: str  # a VM's mode, a host's hostname
    powered_off: bool  # by `kuryr-aio down`: not a fault
    problems: list[str]

    @property
    def what(self) -> str:
        return f"{self.kind} {self.name} ({self.detail})"


def machine_status(machine: Machine, detail: str) -> tuple[str, str, bool, list[str]]:
    """VmStatus's fields of an existing machine."""
    off = machine.powered_off()
    return machine.name, detail, off, [] if off else machine.problems()


def status(layout: Layout) -> list[VmStatus]:
    return [VmStatus(*machine_status(machine, machine.mode or "?"))
            for machine in existing(layout)]

"""Kuryr inside VMs (nested), on the real stack: simulated VMs of `kuryr-aio vm up`
(a Neutron port bound to this host and plugged into br-int, the VM a network
and mount namespace with its own dockerd and a nested Kuryr), one per mode:

  vlan     containers' ports are sub-ports of the VM port's trunk; the VM's own
           Open vSwitch tags them (access ports), as a VM with OVS would
  macvlan  containers' addresses join the VM port's allowed address pairs; the
           VM routes to each container's veth and answers ARP for it

Containers on the host, in one VM and in the other share one Neutron network
(kuryr-aio-vms, adopted by each dockerd).  Traffic stays between namespaces of
this machine."""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from kuryr.neutron import marks

from . import helpers
from .conftest import KURYR
from .test_ports import HTTPD

VM_NETWORK = "kuryr-aio-vms"
VM_SUBNET = ("--subnet", "192.168.250.0/24", "--gateway", "192.168.250.1")
ADOPT = ("-o", f"neutron.net.name={VM_NETWORK}", *VM_SUBNET)
VLAN_VM, PAIRS_VM = "nv1", "nm1"
STARTS = 10  # concurrent container starts of the concurrency tests


aio = helpers.aio


def vm_env(name: str) -> dict[str, str]:
    return helpers.aio_env("vm", "env", name)


class VM:
    def __init__(self, name: str, mode: str, neutron) -> None:
        self.name = name
        self.mode = mode
        env = vm_env(name)
        self.docker = helpers.Docker(env["DOCKER_HOST"])
        self.env = env
        self.port = neutron.find_port(f"kuryr-aio-vm-{name}")

    @property
    def kuryr_pidfile(self) -> str:
        return self.env["KURYR_VM_KURYR_PIDFILE"]


@pytest.fixture(scope="module")
def vms(stack, neutron):
    """One VM per mode, each with a Docker network on kuryr-aio-vms; and the host's."""
    made = {}
    for name, mode in ((VLAN_VM, "vlan"), (PAIRS_VM, "macvlan")):
        aio("vm", "up", name, "--mode", mode)
        made[mode] = VM(name, mode, neutron)
    host = helpers.Docker(stack.docker_host)
    dockers = (made["vlan"].docker, made["macvlan"].docker, host)
    for docker in dockers:
        remove_network_vms(docker)  # left by an interrupted run
        docker.run("network", "create", *KURYR, *ADOPT, "vms")
    yield made
    for docker in dockers:
        remove_network_vms(docker)
    for name in (VLAN_VM, PAIRS_VM):
        aio("vm", "down", name, "--purge")


def remove_network_vms(docker: helpers.Docker) -> None:
    for cid in docker.out("ps", "-aq", "--filter", "network=vms").split():
        docker.run("rm", "-f", cid, check=False)
    docker.run("network", "rm", "vms", check=False)


@pytest.fixture
def start(cleanup, unique):
    """docker run -d on the host or in a VM, removed at the end of the test."""
    return helpers.container_starter(cleanup, f"kv-{unique}", "vms")


pings = helpers.pings


def port_of(neutron, address: str):
    (port,) = neutron.ports(ip_address=address)
    return port


def trunk_subports(neutron, vm: VM) -> dict[str, int]:
    trunk = neutron.trunk_of(vm.port.id)
    return {s.port_id: s.segmentation_id for s in trunk.sub_ports}


def pair_addresses(neutron, vm: VM) -> set[str]:
    return {ip for ip, _ in neutron.get_port(vm.port.id).allowed_address_pairs}


def vm_ports(neutron, vm: VM) -> list:
    return neutron.ports(tags=marks.vm_tag(vm.port.id))


def consistent(neutron, vm: VM) -> str:
    """'' when the VM's trunk or pairs hold exactly its nested Kuryr's ports."""
    ports = {p.id: p for p in vm_ports(neutron, vm)}
    if vm.mode == "vlan":
        subs = trunk_subports(neutron, vm)
        if set(subs) != set(ports):
            return f"sub-ports {sorted(subs)} != Kuryr's ports {sorted(ports)}"
        if len(set(subs.values())) != len(subs):
            return f"duplicate VLAN ids: {subs}"
        return ""
    held = {f.ip_address: p for p in ports.values() for f in p.fixed_ips}
    pairs = pair_addresses(neutron, vm)
    if pairs == set(held):
        return ""
    unpaired = [(ip, p.id, p.device_owner, p.device_id[:12], p.name) for ip, p in held.items()
                if ip not in pairs]
    return f"pairs {sorted(pairs)} != Kuryr's addresses {sorted(held)}; unpaired: {unpaired}"


# -- connectivity ----------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["vlan", "macvlan"])
def test_container_in_a_vm_reaches_the_host_and_the_other_vm(vms, docker, neutron, start,
                                                             mode):
    here, other = vms[mode], vms["macvlan" if mode == "vlan" else "vlan"]
    on_host = start(docker)
    in_vm = start(here.docker)
    in_other = start(other.docker)
    host_ip = docker.ip_of(on_host, "vms")
    vm_ip = here.docker.ip_of(in_vm, "vms")
    other_ip = other.docker.ip_of(in_other, "vms")
    assert helpers.wait_until(lambda: pings(here.docker, in_vm, host_ip), 15), \
        f"{mode}: the VM's container cannot reach the host's"
    assert pings(here.docker, in_vm, other_ip), f"{mode}: no reach to the other VM's container"
    assert pings(docker, on_host, vm_ip), f"{mode}: the host's container cannot reach it"
    # The endpoint is recorded on its port by a background PUT (off the
    # container's start), so the port's owner may lag the first packets.
    assert helpers.wait_until(lambda: port_of(neutron, vm_ip).device_owner
                              == marks.DEVICE_OWNER, 20), f"{mode}: endpoint not recorded"
    port = port_of(neutron, vm_ip)
    assert marks.vm_tag(here.port.id) in port.tags
    if mode == "vlan":
        assert port.id in trunk_subports(neutron, here), "not a sub-port of the VM's trunk"
    else:
        assert vm_ip in pair_addresses(neutron, here), "not in the VM port's address pairs"
    assert consistent(neutron, here) == ""


def test_exposed_port_of_a_nested_container_is_enforced(vms, neutron, ovs, stack, start,
                                                        cleanup, unique):
    """nested-vlan: a sub-port has security groups of its own (OVN filters it)."""
    vm = vms["vlan"]
    web = start(vm.docker, "--expose", "9999", "-e", "PORTS=9999 8888", cmd=HTTPD)
    ip = vm.docker.ip_of(web, "vms")
    assert len(port_of(neutron, ip).security_group_ids) == 2
    ns = helpers.outsider_namespace(neutron, ovs, stack.host, vm.port.network_id, cleanup,
                                    unique)
    assert helpers.wait_until(lambda: helpers.tcp_connects(ns, ip, 9999), 15), \
        "exposed port 9999 of a nested container refused a client outside its groups"
    assert not helpers.tcp_connects(ns, ip, 8888), "port 8888 was reachable without --expose"


@pytest.mark.parametrize(("mode", "port"), [("vlan", 18181), ("macvlan", 18182)])
def test_published_port_of_a_nested_container_is_served_in_the_vm(vms, start, mode, port):
    """-p in a VM: nested Kuryr's forwarder serves it on the VM's own address
    (here its loopback), and stops when the container goes."""
    vm = vms[mode]
    web = start(vm.docker, "-p", f"127.0.0.1:{port}:80", "-e", "PORTS=80", cmd=HTTPD)

    netns = vm.env["KURYR_VM_NETNS"]

    def fetch_in_vm() -> str:
        # (busybox wget crashes with -T; the connect check below bounds it)
        proc = subprocess.run(["ip", "netns", "exec", netns, "busybox", "wget", "-q", "-O", "-",
                               f"http://127.0.0.1:{port}/"],
                              capture_output=True, text=True, timeout=10, check=False)
        return proc.stdout.strip()

    assert helpers.wait_until(lambda: helpers.tcp_connects(netns, "127.0.0.1", port), 15), \
        f"{mode}: published port {port} not served in the VM"
    assert fetch_in_vm() == f"hello-{vm.docker.out('inspect', '-f', '{{.Config.Hostname}}', web)}"
    vm.docker.run("rm", "-f", web)
    assert helpers.wait_until(
        lambda: not helpers.tcp_connects(netns, "127.0.0.1", port, timeout=1), 10), \
        f"{mode}: still served after the container went"


# -- concurrency and clean-up -------------------------------------------------------------

def start_many(vm: VM, unique: str, count: int = STARTS) -> list[str]:
    names = [f"kv-{unique}-many-{n}" for n in range(count)]
    with ThreadPoolExecutor(count) as pool:
        done = list(pool.map(lambda name: vm.docker.run(
            "run", "-d", "--name", name, "--net", "vms", "busybox", "sleep", "600",
            check=False), names))
    failed = [p.stderr.strip() for p in done if p.returncode != 0]
    assert not failed, f"{len(failed)} of {count} starts failed: {failed[:2]}"
    return names


def remove_all(vm: VM, names: list[str]) -> None:
    vm.docker.run("rm", "-f", *names, check=False)


@pytest.mark.parametrize("mode", ["vlan", "macvlan"])
def test_concurrent_starts_then_stops_leave_trunk_and_pairs_exact(vms, neutron, unique,
                                                                  cleanup, mode):
    vm = vms[mode]
    names = start_many(vm, unique)
    cleanup(lambda: remove_all(vm, names))
    addresses = [vm.docker.ip_of(name, "vms") for name in names]
    assert len(set(addresses)) == STARTS
    ports = [port_of(neutron, ip) for ip in addresses]
    if mode == "vlan":
        subs = trunk_subports(neutron, vm)
        vlans = [subs.get(p.id) for p in ports]
        assert None not in vlans, "a container's port is no sub-port"
        assert len(set(vlans)) == STARTS, f"VLAN ids not distinct: {vlans}"
    else:
        assert set(addresses) <= pair_addresses(neutron, vm), "a pair was lost"
    assert helpers.wait_until(lambda: consistent(neutron, vm) == "", 10), \
        consistent(neutron, vm)
    remove_all(vm, names)
    gone = {p.id for p in ports}

    def released() -> bool:
        left = {p.id for p in vm_ports(neutron, vm)} & gone
        # Ports back in the pool stay (ready for the next container); the others go.
        pooled = {p.id for p in vm_ports(neutron, vm)
                  if p.device_owner == marks.POOL_DEVICE_OWNER}
        return not (left - pooled) and consistent(neutron, vm) == ""

    assert helpers.wait_until(released, 20), consistent(neutron, vm) or "ports left"


def kill_nested_kuryr(vm: VM) -> None:
    pid = int(Path(vm.kuryr_pidfile).read_text().strip())
    os.kill(pid, signal.SIGKILL)
    helpers.wait_until(lambda: not Path(f"/proc/{pid}").exists(), 10)


@pytest.mark.parametrize("mode", ["vlan", "macvlan"])
def test_kill_9_of_nested_kuryr_during_starts_leaks_nothing(vms, neutron, unique, mode):
    vm = vms[mode]
    names = [f"kv-{unique}-k9-{n}" for n in range(STARTS)]
    with ThreadPoolExecutor(STARTS) as pool:
        starts = [pool.submit(vm.docker.run, "run", "-d", "--name", name, "--net", "vms",
                              "busybox", "sleep", "600", check=False) for name in names]
        time.sleep(0.5)  # some starts are in Kuryr's hands now
        kill_nested_kuryr(vm)
        # A supervisor starts it again (dockerd waits for the plugin meanwhile).
        aio("vm", "up", vm.name, "--mode", mode)
        for future in starts:
            future.result()  # started, or failed with the plugin gone: both are fine
    remove_all(vm, names)
    stale = [p.id for p in vm_ports(neutron, vm)
             if p.device_owner != marks.POOL_DEVICE_OWNER]
    # What the killed Kuryr left (a port made but never attached, or attached but
    # never recorded) is the collector's: the periodic one waits [gc] grace, so
    # run it now, in the VM, as an operator would.
    collected = subprocess.run(
        [*shlex.split(vm.env["KURYR_VM_EXEC"]), sys.executable, "-m", "kuryr.cli", "gc",
         "--grace", "0", "--config-file", vm.env["KURYR_VM_KURYR_CONF"]],
        capture_output=True, text=True, timeout=120, check=False)
    assert collected.returncode == 0, collected.stderr

    def nothing_leaked() -> str:
        problem = consistent(neutron, vm)
        left = [p.id for p in vm_ports(neutron, vm) if p.device_owner != marks.POOL_DEVICE_OWNER]
        return problem or ("" if not left else f"ports left: {left}")

    assert helpers.wait_until(lambda: nothing_leaked() == "", 20, interval=1), \
        f"{nothing_leaked()} (before collection: {stale}; collected: {collected.stdout})"


def test_the_vms_are_listed_by_status(vms):
    proc = subprocess.run([helpers.aio_command(), "status"], capture_output=True, text=True,
                          check=False)
    assert VLAN_VM in proc.stdout + proc.stderr
    assert PAIRS_VM in proc.stdout + proc.stderr

"""Faults injected into the real stack: parallel load, kill -9, Neutron down or slow,
and the garbage collector's reach.  KURYR_SOAK_ROUNDS / KURYR_SOAK_BURST make the
parallel test longer (`tools/soak`)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from kuryr.aio.plugin import KuryrPlugin
from kuryr.binding import netlink
from kuryr.binding.vif import VIF
from kuryr.neutron import marks

from . import helpers

ROUNDS = int(os.environ.get("KURYR_SOAK_ROUNDS", "2"))
BURST = int(os.environ.get("KURYR_SOAK_BURST", "50"))


def kuryr(stack, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(Path(sys.executable).parent / "kuryr"), *args,
                           "--config-file", str(stack.kuryr_conf)],
                          capture_output=True, text=True, timeout=120, check=False)


def start_all(docker, network: str, names: list[str]) -> dict[str, subprocess.CompletedProcess]:
    def start(name: str) -> subprocess.CompletedProcess:
        return docker.run("run", "-d", "--name", name, "--net", network, "busybox",
                          "sleep", "600", check=False, timeout=600)

    with ThreadPoolExecutor(len(names)) as pool:
        return dict(zip(names, pool.map(start, names), strict=True))


def remove_all(docker, names: list[str]) -> None:
    with ThreadPoolExecutor(min(len(names), 16) or 1) as pool:
        list(pool.map(lambda n: docker.run("rm", "-f", n, check=False, timeout=300), names))


def addresses(docker, network: str, names: list[str]) -> dict[str, str]:
    out = docker.out("inspect", "-f", "{{.Name}} {{(index .NetworkSettings.Networks \""
                     + network + "\").IPAddress}}", *names)
    return dict(line.lstrip("/").split(" ", 1) for line in out.splitlines())


def container_ports(neutron, network_id: str) -> list:
    return [p for p in neutron.api.ports(network_id=network_id)
            if p.device_owner != marks.POOL_DEVICE_OWNER]


# -- load ---------------------------------------------------------------------------------
@pytest.mark.usefixtures("no_leaks")
def test_parallel_bursts_unique_addresses_no_failures_no_leaks(docker, make_network, neutron,
                                                               unique):
    name = make_network("--subnet", "10.81.0.0/22")
    network_id = neutron.api.find_network(marks.network_name(docker.network_id(name))).id
    for round_ in range(ROUNDS):
        names = [f"kb-{unique}-{round_}-{i}" for i in range(BURST)]
        started = time.monotonic()
        results = start_all(docker, name, names)
        try:
            failed = {n: r.stderr.strip() for n, r in results.items() if r.returncode}
            assert not failed, f"round {round_}: {len(failed)} failed starts: {failed}"
            ips = addresses(docker, name, names)
            assert len(set(ips.values())) == BURST, f"duplicate addresses: {ips}"
            # Neutron agrees: each address is on exactly one port of the network (a
            # pooled port may still show device_owner kuryr:pool until its update lands).
            neutron_ips = Counter(ip["ip_address"] for p in neutron.api.ports(
                network_id=network_id) for ip in p.fixed_ips)
            assert all(neutron_ips[ip] == 1 for ip in ips.values()), (neutron_ips, ips)
            print(f"round {round_}: {BURST} started in {time.monotonic() - started:.1f} s")
        finally:
            remove_all(docker, names)
        assert helpers.wait_until(lambda: not container_ports(neutron, network_id), 60), \
            f"ports left after round {round_}: {container_ports(neutron, network_id)}"


# -- crash ---------------------------------------------------------------------------------
@pytest.mark.usefixtures("no_leaks")
def test_kill9_mid_burst_then_restart_leaves_working_or_cleanly_failed(
        stack, docker, make_network, run_container, neutron, unique):
    name = make_network("--subnet", "10.82.0.0/24")
    names = [f"kk-{unique}-{i}" for i in range(20)]
    pid = int(stack.pidfile("kuryr").read_text())
    results: dict = {}
    starter = threading.Thread(target=lambda: results.update(start_all(docker, name, names)))
    starter.start()
    try:
        time.sleep(1.5)  # some containers are through, others are mid-call
        os.kill(pid, signal.SIGKILL)
        assert helpers.wait_until(lambda: not Path(f"/proc/{pid}").exists(), 10)
        time.sleep(2)
        up = subprocess.run([helpers.aio_command(), "up"], capture_output=True, text=True,
                            check=False)
        assert up.returncode == 0, up.stderr
    finally:
        starter.join()
    ok = [n for n in names if results[n].returncode == 0]
    failed = [n for n in names if results[n].returncode != 0]
    print(f"kill -9 mid-burst: {len(ok)} started, {len(failed)} failed")
    try:
        for n in failed:  # failed cleanly: not running, error names the plugin call
            state = docker.run("inspect", "-f", "{{.State.Running}}", n, check=False)
            assert state.stdout.strip() != "true", f"{n} failed but runs"
        probe = run_container(name)
        for n in ok:
            ip = docker.ip_of(n, name)
            assert docker.run("exec", probe, "ping", "-c", "1", "-W", "2", ip,
                              check=False).returncode == 0, f"{n} ({ip}) started but unreachable"
    finally:
        remove_all(docker, names)
    docker.run("rm", "-f", probe)
    # A start that failed because the plugin died mid-call has left dockerd
    # counting its endpoint once (docs/reliability.md, moby/moby#42119).
    helpers.remove_network(docker, stack, name)
    collected = kuryr(stack, "gc", "--grace", "0")
    assert collected.returncode == 0, collected.stdout + collected.stderr
    print("kuryr gc after the crash:", collected.stdout.strip())
    again = kuryr(stack, "gc", "--dry-run", "--grace", "0")
    assert "nothing to collect" in again.stdout, again.stdout


# -- the garbage collector's reach ---------------------------------------------------------
def test_gc_removes_only_this_hosts_kuryr_leftovers(stack, neutron, ovs, tenant_net, cleanup):
    net, _subnet = tenant_net
    host = socket.gethostname()

    def port(**attrs):
        made = neutron.api.create_port(network_id=net.id, **attrs)
        cleanup(lambda: neutron.api.delete_port(made.id, ignore_missing=True))
        return made

    orphan = port(device_owner=marks.DEVICE_OWNER, binding_host_id=host)
    users = port(device_owner="compute:nova", binding_host_id=host)
    other_host = port(device_owner=marks.DEVICE_OWNER, binding_host_id="another-host")
    # A Kuryr-named veth pair whose Neutron port does not exist, and one that is not Kuryr's.
    stray = VIF(port_id="0badc0de-123", mac="fa:16:3e:00:00:01")
    netlink.create_veth(stray)
    cleanup(lambda: netlink.delete_link(stray.host_ifname))
    foreign = VIF(port_id="feedface-99", mac="fa:16:3e:00:00:02")
    subprocess.run(["ip", "link", "add", foreign.host_ifname, "type", "veth", "peer", "name",
                    "x" + foreign.port_id[:11]], check=True)
    cleanup(lambda: netlink.delete_link(foreign.host_ifname))

    dry = kuryr(stack, "gc", "--dry-run", "--grace", "0")
    assert dry.returncode == 0, dry.stderr
    assert f"would remove port {orphan.id}" in dry.stdout, dry.stdout
    assert f"would remove veth {stray.host_ifname}" in dry.stdout, dry.stdout
    for kept in (users.id, other_host.id, foreign.host_ifname):
        assert kept not in dry.stdout, dry.stdout
    assert neutron.api.get_port(orphan.id)
    assert netlink.link_exists(stray.host_ifname)

    young = kuryr(stack, "gc", "--dry-run")  # default grace: just-made things are left
    assert orphan.id not in young.stdout, young.stdout

    done = kuryr(stack, "gc", "--grace", "0")
    assert done.returncode == 0, done.stdout + done.stderr
    assert neutron.api.find_port(orphan.id) is None
    assert not netlink.link_exists(stray.host_ifname)
    assert neutron.api.get_port(users.id)
    assert neutron.api.get_port(other_host.id)
    assert netlink.link_exists(foreign.host_ifname)


def test_gc_removes_networks_this_hosts_docker_forgot(stack, docker, make_network, neutron,
                                                     cleanup):
    real = make_network("--subnet", "10.84.0.0/24")  # dockerd knows it: evidence it is ours
    real_id = docker.network_id(real)
    forgotten_id = "f0" * 32  # a network Docker dropped although its DeleteNetwork failed
    host = socket.gethostname()
    forgotten = neutron.api.create_network(name=marks.network_name(forgotten_id))
    cleanup(lambda: helpers.delete_network(neutron, forgotten.id))
    neutron.api.set_tags(forgotten, [*marks.network_tags(forgotten_id), marks.host_tag(host)])
    elsewhere = neutron.api.create_network(name=marks.network_name("e0" * 32))
    cleanup(lambda: helpers.delete_network(neutron, elsewhere.id))
    neutron.api.set_tags(elsewhere, [*marks.network_tags("e0" * 32),
                                     marks.host_tag("another-host")])

    dry = kuryr(stack, "gc", "--dry-run", "--grace", "0")
    assert f"would remove network {forgotten.id}" in dry.stdout, dry.stdout + dry.stderr
    assert elsewhere.id not in dry.stdout, dry.stdout
    assert real_id[:12] not in dry.stdout, dry.stdout
    done = kuryr(stack, "gc", "--grace", "0")
    assert done.returncode == 0, done.stdout + done.stderr
    assert neutron.api.find_network(forgotten.id) is None
    assert neutron.api.find_network(elsewhere.id) is not None
    assert neutron.api.find_network(marks.network_name(real_id)) is not None


# -- Neutron faults ----------------------------------------------------------------------
def neutron_api_pid(stack) -> int:
    return int(stack.pidfile("neutron-api").read_text())


@pytest.mark.usefixtures("no_leaks")
def test_neutron_down_for_30s(stack, docker, make_network, run_container, neutron, unique):
    name = make_network("--subnet", "10.83.0.0/24", "-o", "kuryr.pool.size=2")
    network_id = neutron.api.find_network(marks.network_name(docker.network_id(name))).id
    def pool_ready() -> bool:
        pooled = list(neutron.api.ports(network_id=network_id,
                                        device_owner=marks.POOL_DEVICE_OWNER))
        return len(pooled) >= 2 and all(netlink.link_exists(
            VIF(port_id=p.id, mac=p.mac_address).container_ifname) for p in pooled)

    assert helpers.wait_until(pool_ready, 30)
    networks_before = len(list(neutron.api.networks()))
    pid = neutron_api_pid(stack)
    os.kill(pid, signal.SIGTERM)
    down_at = time.monotonic()
    assert helpers.wait_until(lambda: not Path(f"/proc/{pid}").exists(), 30)
    try:
        started = time.monotonic()
        created = docker.run("network", "create", "-d", "kuryr", "--ipam-driver", "kuryr",
                             f"kn-{unique}-down", check=False)
        took = time.monotonic() - started
        assert created.returncode != 0
        assert "Neutron" in created.stderr, (took, created.stderr)
        assert took < 20, (took, created.stderr)
        # A pooled port needs no Neutron request: containers still start.
        c = run_container(name)
        time.sleep(max(0.0, 30 - (time.monotonic() - down_at)))
    finally:
        up = subprocess.run([helpers.aio_command(), "up"], capture_output=True, text=True,
                            check=False)
        assert up.returncode == 0, up.stderr
    print(f"Neutron down: network create failed in {took:.1f} s with: {created.stderr.strip()}")
    # The container's bookkeeping reaches Neutron once it is back.
    assert helpers.wait_until(lambda: any(
        p.device_owner == marks.DEVICE_OWNER for p in container_ports(neutron, network_id)), 120)
    assert len(list(neutron.api.networks())) == networks_before
    later = make_network()
    docker.run("rm", "-f", c)
    docker.run("network", "rm", later, name)


class DelayingProxy:
    """TCP proxy on loopback that holds every chunk of Neutron's answers for ``delay``
    seconds: Neutron does the work at once and Kuryr hears of it late (holding the
    requests instead would outlast gunicorn's keep-alive and look like a reset)."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.delay = 0.0
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.upstream)
            threading.Thread(target=self._pipe, args=(client, upstream, False),
                             daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client, True),
                             daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket, delayed: bool) -> None:
        try:
            while data := src.recv(65536):
                if delayed and self.delay:
                    time.sleep(self.delay)
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self.server.close()


@pytest.mark.usefixtures("no_leaks")
def test_slow_neutron_bounded_error_and_late_work_undone(stack, docker, neutron, unique):
    proxy = DelayingProxy(("127.0.0.1", 9696))
    plugin = KuryrPlugin(stack)
    plugin.override_dir.mkdir(exist_ok=True)
    override = plugin.override_dir / "slow-neutron.conf"
    override.write_text(f"[DEFAULT]\nplugin_call_timeout = 5\n\n[neutron]\n"
                        f"endpoint = http://127.0.0.1:{proxy.port}\n")
    try:
        helpers.restart_kuryr(stack)
        create = ("network", "create", "-d", "kuryr", "--ipam-driver", "kuryr",
                  "-o", "kuryr.pool.size=0", f"kn-{unique}-slow")
        # Warm up at full speed: a fresh Kuryr's first RequestPool also discovers
        # Neutron's API version, which would make RequestPool the call that times out.
        docker.run(*create)
        docker.run("network", "rm", create[-1])
        networks_before = {n.id for n in neutron.api.networks()}
        # RequestPool (1 GET) still answers in time, with room for a loaded Neutron;
        # CreateNetwork (3 writes) does not.
        proxy.delay = 2.0
        started = time.monotonic()
        created = docker.run(*create, check=False)
        took = time.monotonic() - started
        assert created.returncode != 0
        assert "CreateNetwork did not complete within 5 s" in created.stderr, created.stderr
        assert took < 15, took
        print(f"slow Neutron: docker got an error in {took:.1f} s: {created.stderr.strip()}")
        # Neutron completes the network later; Kuryr undoes it: nothing Docker does not know.
        assert helpers.wait_until(
            lambda: {n.id for n in neutron.api.networks()} == networks_before, 60, 1), \
            "a network created after the timeout was not undone"
        assert helpers.wait_until(lambda: "undid the late NetworkDriver.CreateNetwork"
                                  in stack.log("kuryr").read_text(), 30)
        # Neutron fast again: the same request works.
        proxy.delay = 0.0
        docker.run(*create)
        docker.run("network", "rm", f"kn-{unique}-slow")
    finally:
        override.unlink(missing_ok=True)
        proxy.delay = 0.0
        helpers.restart_kuryr(stack)
        proxy.close()

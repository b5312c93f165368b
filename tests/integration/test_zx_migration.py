"""In-place migration from kuryr-libnetwork 18.0.0 (issue 11, point 5), for real:
kuryr-libnetwork serves dockerd as driver ``kuryr`` (a spec file, as it is
deployed) and makes networks and containers; it is stopped and this Kuryr starts
on the same URL with the same Neutron; dockerd is not touched.  Old containers
keep talking, new ones join the old networks, connect/disconnect work, and
`docker rm` / `docker network rm` leave nothing of kuryr-libnetwork's in Neutron.

Runs late (it restarts dockerd twice and stands in for the stack's Kuryr); the
stack is put back as it was at the end, whatever happened."""

from __future__ import annotations

import contextlib
import http.client
import subprocess
import sys
from pathlib import Path

import pytest

from kuryr.aio.docker import Docker as AioDocker
from kuryr.aio.plugin import PLUGIN_SOCKET
from kuryr.bench.peer import PORT, SPEC_DIR, KuryrLibnetwork
from kuryr.binding import netlink
from kuryr.binding.vif import VIF
from kuryr.neutron import marks

from . import helpers

SPEC = SPEC_DIR / "kuryr.spec"
URL = f"http://127.0.0.1:{PORT}"


def answers() -> bool:
    conn = http.client.HTTPConnection("127.0.0.1", PORT, timeout=5)
    try:
        conn.request("POST", "/Plugin.Activate", body=b"{}")
        return conn.getresponse().status == 200
    except OSError:
        return False
    finally:
        conn.close()


def stop_stack_kuryr(stack) -> None:
    pidfile = stack.pidfile("kuryr")
    with contextlib.suppress(FileNotFoundError, ProcessLookupError, ValueError):
        pid = int(pidfile.read_text())
        subprocess.run(["kill", "-TERM", str(pid)], check=False)
        assert helpers.wait_until(lambda: not Path(f"/proc/{pid}").exists(), 30)
    PLUGIN_SOCKET.unlink(missing_ok=True)  # else dockerd finds the socket first


def serve_kuryr_on_tcp(stack, tmp_path: Path) -> subprocess.Popen:
    """This Kuryr with the stack's kuryr.conf, listening where kuryr-libnetwork did."""
    path = helpers.stack_kuryr_conf_with(stack, tmp_path / "kuryr.conf", {
        ("DEFAULT", "kuryr_uri"): URL, ("DEFAULT", "plugin_spec_dir"): str(SPEC_DIR)})
    log = tmp_path / "kuryr.log"
    with log.open("w") as out:
        proc = subprocess.Popen([str(Path(sys.executable).parent / "kuryr"), "serve",
                                 "--config-file", str(path)],
                                stdout=out, stderr=subprocess.STDOUT)
    if not helpers.wait_until(lambda: answers() or proc.poll() is not None, 60) \
            or proc.poll() is not None:
        raise AssertionError(f"kuryr serve on {URL} did not start:\n{log.read_text()[-2000:]}")
    return proc


def ip_of(docker, container: str, network: str) -> str:
    return docker.out("inspect", "-f",
                      f"{{{{(index .NetworkSettings.Networks \"{network}\").IPAddress}}}}",
                      container)


def pings(docker, container: str, address: str) -> bool:
    return docker.run("exec", container, "ping", "-c", "1", "-W", "2", address,
                      check=False).returncode == 0


def docker_id(docker, network: str) -> str:
    return docker.out("network", "inspect", "-f", "{{.Id}}", network)


@pytest.fixture
def migration(stack, docker, tmp_path):
    """kuryr-libnetwork as ``kuryr``; yields a switch() that puts this Kuryr in its
    place; at the end the stack's own Kuryr serves dockerd again."""
    anchor = KuryrLibnetwork(stack, driver="kuryr")
    anchor.install()  # slow the first time only (kuryr-bench shares the venv)
    aio_docker = AioDocker(stack)
    running: dict[str, subprocess.Popen] = {}
    aio_docker.down()  # dockerd remembers a plugin's address until it restarts
    stop_stack_kuryr(stack)
    try:
        anchor.start()  # writes /etc/docker/plugins/kuryr.spec -> its URL
        aio_docker.up()

        def switch() -> None:
            anchor.stop()  # removes its spec file: ours writes the same one
            running["kuryr"] = serve_kuryr_on_tcp(stack, tmp_path)

        yield switch
    finally:
        anchor.stop()
        aio_docker.down()
        proc = running.get("kuryr")
        if proc is not None and proc.poll() is None:
            proc.terminate()
            proc.wait(timeout=30)
        SPEC.unlink(missing_ok=True)
        up = subprocess.run([helpers.aio_command(), "up"], capture_output=True, text=True,
                            check=False)
        assert up.returncode == 0, up.stdout + up.stderr


def test_kuryr_libnetwork_host_switches_to_kuryr_in_place(stack, docker, neutron, ovs,
                                                          migration, cleanup, unique):
    plain, ranged = f"mig-{unique}-a", f"mig-{unique}-b"
    old = [f"mig-{unique}-{n}" for n in ("c1", "c2", "c3")]
    new = f"mig-{unique}-new"
    for name in [*old, new]:
        cleanup(lambda n=name: docker.run("rm", "-f", n, check=False))
    for network in (plain, ranged):
        cleanup(lambda n=network: docker.run("network", "rm", n, check=False))
    # -- kuryr-libnetwork makes the host's networks and containers ---------------------
    docker.run("network", "create", "-d", "kuryr", "--ipam-driver", "kuryr",
               "--subnet", "10.201.0.0/24", "--gateway", "10.201.0.1", plain)
    docker.run("network", "create", "-d", "kuryr", "--ipam-driver", "kuryr",
               "--subnet", "10.202.0.0/16", "--ip-range", "10.202.0.0/24",
               "--gateway", "10.202.0.1", ranged)
    ids = {n: docker_id(docker, n) for n in (plain, ranged)}
    for container, network in zip(old, (plain, plain, ranged), strict=True):
        docker.run("run", "-d", "--name", container, "--net", network, "busybox",
                   "sleep", "600")
    nets = {n: list(neutron.api.networks(tags=marks.network_tags(i))) for n, i in ids.items()}
    assert all(len(found) == 1 for found in nets.values()), nets
    pools = [p for p in neutron.api.subnet_pools() if p.name in (
        "kuryrPool-10.201.0.0/24", "kuryrPool-10.202.0.0/24")]
    assert len(pools) == 2, [p.name for p in neutron.api.subnet_pools()]
    old_ports = {p.id for n in nets.values() for p in neutron.api.ports(network_id=n[0].id)
                 if p.device_owner == marks.DEVICE_OWNER}
    assert len(old_ports) == len(old)
    c1_to_c2 = ip_of(docker, old[1], plain)
    assert pings(docker, old[0], c1_to_c2), "kuryr-libnetwork's own containers do not talk"

    # -- the switch: dockerd is not touched ----------------------------------------------
    migration()
    problems = []
    if not pings(docker, old[0], c1_to_c2):
        problems.append("old containers lost connectivity after the switch")
    proc = docker.run("run", "-d", "--name", new, "--net", plain, "busybox", "sleep", "600",
                      check=False)
    if proc.returncode != 0:
        problems.append(f"a new container cannot join the old network: {proc.stderr}")
    else:
        if not pings(docker, new, ip_of(docker, old[0], plain)):
            problems.append("the new container does not reach an old one")
        connected = docker.run("network", "connect", ranged, new, check=False)
        if connected.returncode != 0:
            problems.append(f"network connect to the old ranged network: {connected.stderr}")
        elif not pings(docker, new, ip_of(docker, old[2], ranged)):
            problems.append("connected container does not reach the old one on that network")
        else:
            got = ip_of(docker, new, ranged)
            if not got.startswith("10.202.0."):
                problems.append(f"address {got} is outside the --ip-range subnet")
            disconnected = docker.run("network", "disconnect", ranged, new, check=False)
            if disconnected.returncode != 0:
                problems.append(f"network disconnect: {disconnected.stderr}")
    assert not problems, "\n".join(problems)

    # -- everything goes, and nothing of kuryr-libnetwork's is left in Neutron -----------
    all_ports = old_ports | {p.id for n in nets.values()
                             for p in neutron.api.ports(network_id=n[0].id)}
    for container in [*old, new]:
        docker.run("rm", "-f", container)
    for network in (plain, ranged):
        helpers.remove_network(docker, stack, network)

    def leftovers() -> list[str]:
        left = [f"network {n.name}" for found in nets.values() for n in found
                if neutron.api.find_network(n.id) is not None]
        left += [f"port {p}" for p in all_ports if neutron.api.find_port(p) is not None]
        left += [f"subnetpool {p.name}" for p in pools
                 if neutron.api.find_subnet_pool(p.id) is not None]
        links = netlink.link_names()
        left += [f"veth {VIF(port_id=p, mac='').host_ifname}" for p in all_ports
                 if VIF(port_id=p, mac="").host_ifname in links]
        left += [f"ovs interface {VIF(port_id=p, mac='').host_ifname}" for p in all_ports
                 if ovs.interface_external_ids(VIF(port_id=p, mac="").host_ifname)]
        return left

    helpers.wait_until(lambda: not leftovers(), 15)
    assert not leftovers(), leftovers()

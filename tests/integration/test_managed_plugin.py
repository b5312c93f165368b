"""Kuryr as a managed Docker plugin (v2), built by tools/build-plugin from this
checkout (a Debian tree made here, nothing pulled) and enabled on the stack's
dockerd.  For the module's length it is the host's Docker Kuryr: the stack's
own `kuryr serve` is stopped (one Docker-side Kuryr per host, as deployed) and
started again at the end.
"""

from __future__ import annotations

import configparser
import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from kuryr.aio import managed_plugin
from kuryr.neutron import marks

from . import helpers

REPO = Path(__file__).resolve().parents[2]
BUILD_PLUGIN = str(REPO / "tools" / "build-plugin")
NAME = managed_plugin.DEFAULT_NAME
DRIVER = ("-d", NAME, "--ipam-driver", NAME)


def build_plugin(stack, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "DOCKER_HOST": stack.docker_host}
    return subprocess.run([BUILD_PLUGIN, *args], capture_output=True, text=True, env=env,
                          check=False, timeout=1200)


def plugin_conf_dir(stack, where: Path) -> Path:
    """kuryr.conf as the plugin sees it: the stack's Neutron, dockerd's socket
    and namespaces at the paths the plugin's mounts give them."""
    stack_conf = configparser.RawConfigParser()
    stack_conf.read(stack.kuryr_conf)
    conf = configparser.RawConfigParser()
    conf["DEFAULT"] = {"docker_uri": "unix:///run/docker.sock",
                       "docker_netns_dir": "/run/docker/netns",
                       # kuryr-libnetwork's logging options, into the logs mount
                       "log_dir": "/var/log/kuryr"}
    for section in ("neutron", "binding", "publish"):
        conf[section] = dict(stack_conf[section])
    where.mkdir(mode=0o700)
    with (where / "kuryr.conf").open("w") as out:
        conf.write(out)
    return where


def stop_stack_kuryr(stack) -> None:
    """The stack's own `kuryr serve` stopped (`kuryr-aio up` starts it again)."""
    pid = int(stack.pidfile("kuryr").read_text())
    os.kill(pid, signal.SIGTERM)
    assert helpers.wait_until(lambda: not Path(f"/proc/{pid}").exists(), 30)


@pytest.fixture(scope="module")
def plugin(stack, tmp_path_factory):
    """The plugin enabled, in place of the stack's own Kuryr; removed after."""
    stop_stack_kuryr(stack)
    scratch = tmp_path_factory.mktemp("plugin")
    conf_dir = plugin_conf_dir(stack, scratch / "etc-kuryr")
    try:
        started = time.monotonic()
        built = build_plugin(stack, *mount_args(stack, conf_dir))
        print(f"tools/build-plugin: {time.monotonic() - started:.1f} s\n{built.stdout}")
        assert built.returncode == 0, built.stdout + built.stderr
        yield conf_dir
    finally:
        removed = build_plugin(stack, "--remove")
        up = subprocess.run([helpers.aio_command(), "up"], capture_output=True, text=True,
                            check=False)
        assert removed.returncode == 0, removed.stderr
        assert up.returncode == 0, up.stdout + up.stderr


def mount_args(stack, conf_dir: Path) -> list[str]:
    return ["--mount", f"config={conf_dir}", "--mount", f"docker-socket={stack.docker_sock}",
            "--mount", f"logs={conf_dir.parent / 'logs'}"]


def inspect(docker) -> dict:
    return json.loads(docker.out("plugin", "inspect", NAME))[0]


@pytest.fixture
def plugin_network(plugin, stack, docker, cleanup, unique):
    counter = iter(range(10))

    def make(subnet: str) -> str:
        name = f"mp-{unique}-{next(counter)}"
        docker.run("network", "create", *DRIVER, "--subnet", subnet, name)
        cleanup(lambda: helpers.remove_network(docker, stack, name))
        return name

    return make


def test_the_plugin_is_enabled_with_only_the_capabilities_it_needs(plugin, docker):
    found = inspect(docker)
    assert found["Enabled"]
    config = found["Config"]
    assert sorted(config["Interface"]["Types"]) == ["docker.ipamdriver/1.0",
                                                     "docker.networkdriver/1.0"]
    assert config["Network"]["Type"] == "host"
    assert config["Linux"]["Capabilities"] == list(managed_plugin.CAPABILITIES)
    mounts = {m["Name"]: m["Source"] for m in found["Settings"]["Mounts"]}
    assert mounts["config"] == str(plugin)
    # [DEFAULT] log_dir of its kuryr.conf, through the logs mount.
    log = plugin.parent / "logs" / "kuryr.log"
    assert helpers.wait_until(lambda: log.exists() and "kuryr serving" in log.read_text(), 10)


def test_a_missing_mount_source_is_refused_before_the_plugin_is_touched(plugin, stack,
                                                                         docker, tmp_path):
    before = inspect(docker)
    refused = build_plugin(stack, *mount_args(stack, plugin),
                           "--mount", f"openvswitch={tmp_path / 'nowhere'}")
    assert refused.returncode == 2
    assert f"openvswitch={tmp_path / 'nowhere'}" in refused.stderr, refused.stderr
    after = inspect(docker)
    assert (after["Id"], after["Enabled"], after["Settings"]) == \
        (before["Id"], before["Enabled"], before["Settings"])


def test_building_again_changes_nothing(plugin, stack, docker):
    before = inspect(docker)["Id"]
    started = time.monotonic()
    again = build_plugin(stack, *mount_args(stack, plugin))
    print(f"tools/build-plugin again: {time.monotonic() - started:.1f} s")
    assert again.returncode == 0, again.stderr
    assert "already this build" in again.stdout, again.stdout
    assert inspect(docker)["Id"] == before


def test_an_unknown_setting_is_refused_by_name(plugin, stack, docker):
    before = inspect(docker)
    refused = build_plugin(stack, "--mount", "nonsense=/tmp", "--env", "OS_FOO__BAR=1")
    assert refused.returncode != 0
    assert "nonsense" in refused.stderr, refused.stderr
    assert "OS_FOO__BAR" in refused.stderr, refused.stderr
    assert "openvswitch" in refused.stderr  # the names it does know
    after = inspect(docker)
    assert (after["Id"], after["Enabled"]) == (before["Id"], before["Enabled"])


def test_containers_on_its_network_get_neutron_ports_and_talk(plugin, stack, neutron, docker,
                                                              plugin_network, cleanup, unique):
    name = plugin_network("10.71.0.0/24")
    (net,) = neutron.networks_tagged(marks.network_tags(docker.network_id(name)))
    published = 18000 + int(unique[:3], 16) % 1000
    server = f"mpc-{unique}-s"
    docker.run("run", "-d", "--name", server, "--net", name, "-p",
               f"127.0.0.1:{published}:7000", "busybox", "sh", "-c",
               "while true; do echo kuryr-plugin-ok | nc -l -p 7000; done")
    cleanup(lambda: docker.run("rm", "-f", server, check=False))
    client = f"mpc-{unique}-c"
    docker.run("run", "-d", "--name", client, "--net", name, "busybox", "sleep", "600")
    cleanup(lambda: docker.run("rm", "-f", client, check=False))

    server_ip = docker.ip_of(server, name)
    assert docker.run("exec", client, "ping", "-c", "2", "-W", "2", server_ip,
                      check=False).returncode == 0
    got = docker.run("exec", client, "sh", "-c", f"nc {server_ip} 7000 </dev/null", check=False)
    assert "kuryr-plugin-ok" in got.stdout, got.stderr
    # Published on the host's loopback by the plugin's forwarder, which enters
    # the container's namespace through the plugin's view of dockerd's netns dir.
    assert helpers.wait_until(lambda: b"kuryr-plugin-ok" in _read(published), 10)

    (port,) = neutron.api.ports(fixed_ips=[f"ip_address={server_ip}"], network_id=net.id)
    assert port.binding_host_id == stack.host
    assert helpers.wait_until(
        lambda: neutron.get_port(port.id).device_owner == marks.DEVICE_OWNER, 10)
    assert helpers.wait_until(lambda: neutron.get_port(port.id).status == "ACTIVE", 15)

    docker.run("rm", "-f", server, client)
    helpers.remove_network(docker, stack, name)
    # Kuryr made the Neutron network: `docker network rm` deletes it, ports and all.
    assert helpers.wait_until(lambda: not list(neutron.api.ports(network_id=net.id)), 10)
    assert not neutron.api.find_network(net.id, ignore_missing=True)


def test_its_networks_work_after_dockerd_restarts(plugin, stack, docker, plugin_network,
                                                  cleanup, unique):
    name = plugin_network("10.72.0.0/24")
    first = f"mpr-{unique}-a"
    docker.run("run", "-d", "--name", first, "--net", name, "busybox", "sleep", "600")
    cleanup(lambda: docker.run("rm", "-f", first, check=False))

    helpers.restart_dockerd(stack)  # stops the containers and the plugin, starts both
    stop_stack_kuryr(stack)  # which `kuryr-aio up` in it started again

    assert inspect(docker)["Enabled"]
    docker.run("start", first)
    second = f"mpr-{unique}-b"
    docker.run("run", "-d", "--name", second, "--net", name, "busybox", "sleep", "600")
    cleanup(lambda: docker.run("rm", "-f", second, check=False))
    assert docker.run("exec", second, "ping", "-c", "2", "-W", "2",
                      docker.ip_of(first, name), check=False).returncode == 0


# -- from a registry: last, it replaces the module's plugin ----------------------------

@pytest.fixture
def registry(stack, tmp_path):
    """Debian's docker-registry (Docker's distribution) on a free loopback port,
    storing in tmp_path; its binary unpacked from the .deb into the stack's
    cache (no service of the package is installed or started)."""
    binary = _registry_binary(stack.cache / "docker-registry")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    (tmp_path / "config.yml").write_text(
        f"version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {tmp_path / 'store'}\n"
        f"http:\n  addr: 127.0.0.1:{port}\nlog:\n  level: warn\n")
    with (tmp_path / "registry.log").open("w") as log:
        proc = subprocess.Popen([str(binary), "serve", str(tmp_path / "config.yml")],
                                stdout=log, stderr=subprocess.STDOUT)
    try:
        assert helpers.wait_until(lambda: _get(port, "/v2/") is not None, 20), \
            (tmp_path / "registry.log").read_text()
        yield f"127.0.0.1:{port}"  # dockerd takes 127.0.0.0/8 registries without TLS
    finally:
        proc.terminate()
        proc.wait(timeout=20)
        # ~80 MB of layer per run: pytest keeps its last temporary directories.
        shutil.rmtree(tmp_path / "store", ignore_errors=True)


def _registry_binary(where: Path) -> Path:
    binary = where / "usr" / "bin" / "docker-registry"
    if binary.exists():
        return binary
    where.mkdir(parents=True, exist_ok=True)
    subprocess.run(["apt-get", "download", "-q", "docker-registry"], cwd=where, check=True,
                   capture_output=True, timeout=600)
    (deb,) = where.glob("docker-registry_*.deb")
    subprocess.run(["dpkg-deb", "-x", str(deb), str(where)], check=True, timeout=120)
    deb.unlink()
    return binary


def _get(port: int, path: str) -> dict | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=3) as answer:
            return json.loads(answer.read() or b"{}")
    except (OSError, ValueError):
        return None


def test_zz_pushed_to_a_registry_it_installs_on_a_host_and_works(plugin, stack, docker,
                                                                 registry, plugin_network,
                                                                 cleanup, unique):
    """The way to hosts without a checkout (docs/install.md): build and push
    here, `docker plugin install --alias kuryr/kuryr:latest` there, with that
    host's settings.  Here the same dockerd is both: the module's plugin is
    replaced by the installed one (the teardown removes it as before)."""
    reference = f"{registry}/kuryr/kuryr:{unique}"
    build = inspect(docker)["Config"]["Description"]
    started = time.monotonic()
    pushed = build_plugin(stack, "--push", reference)
    print(f"tools/build-plugin --push: {time.monotonic() - started:.1f} s\n{pushed.stdout}")
    assert pushed.returncode == 0, pushed.stdout + pushed.stderr
    assert f"pushed {reference}" in pushed.stdout
    port = int(registry.rsplit(":", 1)[1])
    assert unique in (_get(port, "/v2/kuryr/kuryr/tags/list") or {}).get("tags", [])
    listed = docker.out("plugin", "ls", "--format", "{{.Name}}").split()
    assert reference not in listed, "the plugin made for the push stayed"

    docker.run("plugin", "rm", "--force", NAME)
    # The same mounts as the module's plugin, as `docker plugin install` takes them.
    settings = [pair.replace("=", ".source=", 1) for pair in mount_args(stack, plugin)[1::2]]
    started = time.monotonic()
    docker.run("plugin", "install", "--grant-all-permissions", "--alias", NAME, reference,
               *settings, timeout=900)
    print(f"docker plugin install: {time.monotonic() - started:.1f} s")
    found = inspect(docker)
    assert found["Enabled"]
    assert found["PluginReference"] == reference
    assert found["Config"]["Description"] == build, "not the build that was pushed"
    # Sorted by the pull; the same three.
    assert sorted(found["Config"]["Linux"]["Capabilities"]) == sorted(managed_plugin.CAPABILITIES)

    name = plugin_network("10.73.0.0/24")
    a, b = f"mpi-{unique}-a", f"mpi-{unique}-b"
    for container in (a, b):
        docker.run("run", "-d", "--name", container, "--net", name, "busybox", "sleep", "600")
        cleanup(lambda c=container: docker.run("rm", "-f", c, check=False))
    assert docker.run("exec", a, "ping", "-c", "2", "-W", "2", docker.ip_of(b, name),
                      check=False).returncode == 0


def _read(port: int) -> bytes:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=3) as sock:
            sock.settimeout(3)
            return sock.recv(100)
    except OSError:
        return b""

"""devstack/plugin.sh, Kuryr's devstack plugin, run phase by phase as devstack
runs it (settings sourced, then ``source plugin.sh <mode> <phase>`` under
``set -o errexit``), with devstack's own functions replaced by the stand-ins
of devstack_stubs.sh, against the real stack: the Kuryr it starts serves the
stack's dockerd in place of the stack's own Kuryr for the length of the test.

Run it under the lock of everyone who swaps the stack's Kuryr:
``flock /tmp/kuryr-swap.lock .venv/bin/python -m pytest tests/integration/test_devstack.py``.
"""

from __future__ import annotations

import configparser
import os
import shlex
import signal
import socket
import stat
import subprocess
import sys
from pathlib import Path

from keystoneauth1 import loading as ks_loading

from kuryr import config
from kuryr.aio.plugin import PLUGIN_SOCKET, KuryrPlugin
from kuryr.neutron import marks

from . import helpers
from .conftest import KURYR

REPO = Path(__file__).resolve().parents[2]
SETTINGS = REPO / "devstack" / "settings"
PLUGIN = REPO / "devstack" / "plugin.sh"
STUBS = Path(__file__).with_name("devstack_stubs.sh")
SHELLCHECK = "/usr/bin/shellcheck"
KURYR_BIN_DIR = Path(sys.executable).parent


def devstack_env(tmp_path: Path, **settings: str) -> dict[str, str]:
    """The environment of one devstack run: nothing of the caller's (no
    KURYR_CONFIG_FILE from `kuryr-aio env`) but PATH, and devstack's globals and
    the plugin's settings given."""
    stub_dir = tmp_path / "stub"
    stub_dir.mkdir(exist_ok=True)
    return {
        "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
        "HOME": os.environ.get("HOME", "/root"),
        "LANG": "C.UTF-8",
        "STUB_DIR": str(stub_dir),
        "STUB_BIN_DIR": str(KURYR_BIN_DIR),
        # devstack's globals
        "DEST": str(tmp_path / "opt-stack"),
        "DATA_DIR": str(tmp_path / "data"),
        "STACK_USER": "root",
        # the plugin's settings
        "KURYR_DIR": str(REPO),
        "KURYR_CONFIG_DIR": str(tmp_path / "etc-kuryr"),
        **settings,
    }


def devstack(env: dict[str, str], *phase: str, timeout: float = 150,
             check: bool = True) -> subprocess.CompletedProcess:
    """``source devstack/plugin.sh PHASE`` in a fresh bash, as stack.sh,
    unstack.sh and clean.sh do (each sources the settings first)."""
    script = "\n".join([
        "set -o errexit -o nounset -o pipefail",
        f"source {shlex.quote(str(STUBS))}",
        f"source {shlex.quote(str(SETTINGS))}",
        f'source {shlex.quote(str(PLUGIN))} "$@"',
    ])
    proc = subprocess.run(["/bin/bash", "-c", script, "devstack", *phase], env=env,
                          capture_output=True, text=True, timeout=timeout, check=False)
    if check:
        assert proc.returncode == 0, (f"plugin.sh {' '.join(phase)} exited {proc.returncode}:\n"
                                      f"{proc.stdout}\n{proc.stderr}")
    return proc


def calls(env: dict[str, str]) -> list[list[str]]:
    """The stubbed devstack functions the plugin called, with their arguments."""
    path = Path(env["STUB_DIR"]) / "calls"
    return [line.split(" ") for line in path.read_text().splitlines()] if path.exists() else []


def read_ini(path: Path) -> dict[str, dict[str, str]]:
    ini = configparser.RawConfigParser(default_section="\0none")  # DEFAULT as a section
    ini.optionxform = str  # type: ignore[assignment,method-assign]
    ini.read(path)
    return {section: dict(ini[section]) for section in ini.sections()}


def unknown_options(ini: dict[str, dict[str, str]]) -> set[str]:
    """Options of the file that are none of Kuryr's (kuryr/config.py): oslo.config
    ignores them silently."""
    known = {group: {opt.dest for opt in opts} for group, opts in config.list_opts()}
    auth_type = ini.get("neutron", {}).get("auth_type")
    if auth_type:
        known["neutron"] |= {opt.dest for opt in
                             ks_loading.get_auth_plugin_conf_options(auth_type)}
    return {f"[{section}] {option}" for section, options in ini.items()
            for option in options if option not in known.get(section, set())}


def kuryr_status(conf: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(KURYR_BIN_DIR / "kuryr"), "status", "--config-file", str(conf)],
                          capture_output=True, text=True, timeout=60, check=False,
                          env={k: v for k, v in os.environ.items() if k != "KURYR_CONFIG_FILE"})


def status_ok(proc: subprocess.CompletedProcess, check: str) -> bool:
    return any(line.startswith(f"OK    {check}:") for line in proc.stdout.splitlines())


def alive(pid: int) -> bool:
    try:
        return b"kuryr" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except FileNotFoundError:
        return False


def plugin_answers() -> bool:
    from kuryr.aio.plugin import plugin_answers as answers

    try:
        return answers()
    except OSError:
        return False


# -- the scripts ---------------------------------------------------------------------
def test_plugin_and_settings_are_shellcheck_clean():
    assert Path(SHELLCHECK).exists(), f"{SHELLCHECK} is not installed (apt-get install shellcheck)"
    proc = subprocess.run([SHELLCHECK, "-s", "bash", str(PLUGIN), str(SETTINGS), str(STUBS)],
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout == "", proc.stdout


def test_install_and_keystone_config(tmp_path):
    """keystone enabled: Kuryr's user with member + service on the service project,
    and password auth in kuryr.conf (no Keystone here: only the file is checked)."""
    env = devstack_env(tmp_path, ENABLED_SERVICES="keystone,neutron-api",
                       SERVICE_PASSWORD="secret-pw",  # noqa: S106 - a made-up value, checked below
                       SERVICE_DOMAIN_NAME="Default",
                       SERVICE_PROJECT_NAME="service", REGION_NAME="RegionOne",
                       KEYSTONE_SERVICE_URI="http://192.0.2.10/identity")
    devstack(env, "stack", "install")
    assert calls(env) == [["setup_develop", str(REPO)]]

    devstack(env, "stack", "post-config")
    assert calls(env)[1:] == [
        ["get_or_create_user", "kuryr", "secret-pw", "Default"],
        ["get_or_add_user_project_role", "member", "kuryr", "service", "Default", "Default"],
        ["get_or_add_user_project_role", "service", "kuryr", "service", "Default", "Default"],
    ]
    conf = tmp_path / "etc-kuryr" / "kuryr.conf"
    assert stat.S_IMODE(conf.stat().st_mode) == 0o600  # it holds the password
    ini = read_ini(conf)
    assert ini["neutron"] == {
        "auth_type": "password", "auth_url": "http://192.0.2.10/identity",
        "username": "kuryr", "password": "secret-pw", "user_domain_name": "Default",
        "project_name": "service", "project_domain_name": "Default",
        "region_name": "RegionOne"}
    assert ini["DEFAULT"]["host"] == socket.gethostname()
    assert ini["DEFAULT"]["state_dir"] == str(tmp_path / "data" / "kuryr")
    assert ini["DEFAULT"]["debug"] == "False"
    assert "publish" not in ini
    assert unknown_options(ini) == set()
    loaded = config.load(["--config-file", str(conf)])
    assert loaded.neutron.auth_type == "password"
    assert loaded.binding.ovs_bridge == "br-int"
    assert loaded.kuryr_uri == f"unix://{PLUGIN_SOCKET}"

    devstack(env, "clean")
    assert not conf.exists()
    assert not (tmp_path / "etc-kuryr").exists()
    assert not (tmp_path / "data" / "kuryr").exists()


# -- on the stack --------------------------------------------------------------------
def test_plugin_runs_kuryr_on_the_stack(stack, docker, neutron, cleanup, unique, tmp_path):
    env = devstack_env(
        tmp_path, ENABLED_SERVICES="neutron-api,ovn-controller",
        KURYR_NEUTRON_AUTH="noauth", KURYR_NEUTRON_ENDPOINT=stack.neutron_url,
        KURYR_DOCKER_URI=stack.docker_host,
        # As the stack's own Kuryr: other users' published ports stay as they are.
        KURYR_PUBLISH_NETWORK="public")
    conf = tmp_path / "etc-kuryr" / "kuryr.conf"

    # -- stack install, stack post-config: kuryr.conf
    devstack(env, "stack", "install")
    devstack(env, "stack", "post-config")
    assert stat.S_IMODE(conf.stat().st_mode) == 0o600
    ini = read_ini(conf)
    assert ini == {
        "DEFAULT": {"debug": "False", "host": socket.gethostname(),
                    "kuryr_uri": f"unix://{PLUGIN_SOCKET}", "docker_uri": stack.docker_host,
                    "state_dir": str(tmp_path / "data" / "kuryr")},
        "neutron": {"auth_type": "none", "endpoint": stack.neutron_url},
        "binding": {"ovs_bridge": "br-int"},
        "publish": {"floating_ip_network": "public"},
    }
    assert unknown_options(ini) == set()
    assert (tmp_path / "data" / "kuryr").is_dir()
    # Neutron, OVS and dockerd as the file says (the plugin answering is still the stack's).
    status = kuryr_status(conf)
    assert status.returncode == 0, status.stdout + status.stderr
    assert all(status_ok(status, check) for check in ("neutron", "ovs", "docker"))

    # -- stack extra: the plugin's Kuryr in place of the stack's
    pidfile = Path(env["STUB_DIR"]) / "kuryr.pid"

    def restore_stack_kuryr():
        helpers.aio("up")
        assert plugin_answers(), "the stack's Kuryr does not answer after `kuryr-aio up`"

    def stop_plugins_kuryr():
        # Only the PID run_process started, when the test ended before unstack.
        if pidfile.exists() and alive(pid := int(pidfile.read_text())):
            os.kill(pid, signal.SIGTERM)
            if not helpers.wait_until(lambda: not alive(pid), 30):
                os.kill(pid, signal.SIGKILL)

    cleanup(restore_stack_kuryr)
    cleanup(stop_plugins_kuryr)
    KuryrPlugin(stack).down()  # by the stack's pidfile
    assert helpers.wait_until(lambda: not plugin_answers(), 15)

    extra = devstack(env, "stack", "extra")
    assert "OK    plugin: the plugin answers" in extra.stdout, extra.stdout
    pid = int(pidfile.read_text())
    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    assert cmdline[-4:-1] == [b"serve", b"--config-file", str(conf).encode()], cmdline
    assert plugin_answers()  # POST /Plugin.Activate on the plugin socket

    # -- a Docker network and containers through it
    name = f"kds-{unique}"
    docker.run("network", "create", *KURYR, name)
    cleanup(lambda: helpers.remove_network(docker, stack, name))
    tags = marks.network_tags(docker.network_id(name))
    (net,) = neutron.networks_tagged(tags)
    server = f"kds-{unique}-0"
    docker.run("run", "-d", "--name", server, "--net", name, "busybox", "sleep", "600")
    cleanup(lambda: docker.run("rm", "-f", server, check=False))
    address = docker.ip_of(server, name)
    (port,) = [p for p in neutron.api.ports(network_id=net.id)
               if any(ip["ip_address"] == address for ip in p.fixed_ips)]
    # The container's owner is written off the critical path (the background writer).
    assert helpers.wait_until(
        lambda: neutron.api.get_port(port.id).device_owner == marks.DEVICE_OWNER, 15)
    assert neutron.api.get_port(port.id).binding_host_id == socket.gethostname()
    ping = docker.run("run", "--rm", "--net", name, "busybox", "ping", "-c", "2", "-W", "2",
                      address, check=False)
    assert ping.returncode == 0, ping.stdout + ping.stderr
    docker.run("rm", "-f", server)
    helpers.remove_network(docker, stack, name)
    assert neutron.networks_tagged(tags) == []
    assert list(neutron.api.ports(network_id=net.id)) == []

    # -- unstack: that Kuryr stops; clean: its files go
    devstack(env, "unstack")
    assert helpers.wait_until(lambda: not alive(pid), 5), f"kuryr {pid} still runs"
    assert not pidfile.exists()
    assert not plugin_answers()
    devstack(env, "clean")
    assert not conf.exists()
    assert not (tmp_path / "data" / "kuryr").exists()
    assert ["run_process", "kuryr", "root", "root"] in calls(env)

    restore_stack_kuryr()  # again at teardown: idempotent


def test_extra_refuses_a_socket_someone_serves(stack, tmp_path):
    """With the stack's Kuryr on the socket, `stack extra` starts nothing and says why.
    (No keystone service and no KURYR_NEUTRON_AUTH: no-auth Neutron.)"""
    if not plugin_answers():
        helpers.aio("up")
    env = devstack_env(tmp_path, ENABLED_SERVICES="neutron-api",
                       KURYR_NEUTRON_ENDPOINT=stack.neutron_url,
                       KURYR_DOCKER_URI=stack.docker_host)
    devstack(env, "stack", "post-config")
    assert read_ini(tmp_path / "etc-kuryr" / "kuryr.conf")["neutron"] == {
        "auth_type": "none", "endpoint": stack.neutron_url}
    proc = devstack(env, "stack", "extra", check=False)
    assert proc.returncode != 0
    assert f"a plugin already answers on {PLUGIN_SOCKET}" in proc.stderr, proc.stderr
    assert not (Path(env["STUB_DIR"]) / "kuryr.pid").exists()

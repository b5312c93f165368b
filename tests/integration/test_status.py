"""`kuryr status` on the all-in-one stack: all OK as it runs, and one plain
sentence per thing that a broken copy of its kuryr.conf gets wrong.

Read-only: every test runs `kuryr status`, which only connects and asks.
"""

from __future__ import annotations

import configparser
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from kuryr.aio.layout import Layout
from kuryr.status import http_request

from . import helpers

ROOT = Path(__file__).resolve().parents[2]


def plugin_answers(uri: str) -> bool:
    try:
        return http_request(uri, "POST", "/Plugin.Activate", timeout=5)[0] == 200
    except OSError:
        return False


@pytest.fixture(scope="module")
def aio(request) -> Layout:
    """The running stack; started through the `stack` fixture only when it is not up,
    so this read-only file never restarts or rewrites a stack someone is using."""
    layout = Layout.default()
    if not (layout.kuryr_conf.exists() and plugin_answers("unix:///run/docker/plugins/kuryr.sock")):
        return request.getfixturevalue("stack")
    return layout


@pytest.fixture
def conf_copy(aio, tmp_path):
    """Write a copy of the stack's kuryr.conf with some options changed."""

    def write(**changes: dict[str, str]) -> Path:
        parser = configparser.RawConfigParser()
        parser.optionxform = str
        parser.read(aio.kuryr_conf)
        # A kuryr.conf written by a kuryr-aio older than docker_uri lacks it.
        if not parser.has_option("DEFAULT", "docker_uri"):
            parser.set("DEFAULT", "docker_uri", aio.docker_host)
        for section, options in changes.items():
            if section != "DEFAULT" and not parser.has_section(section):
                parser.add_section(section)
            for name, value in options.items():
                parser.set(section, name, value)
        path = tmp_path / "kuryr.conf"
        with path.open("w") as out:
            parser.write(out)
        return path

    return write


def kuryr_status(conf: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kuryr.cli", "status", "--config-file",
                           str(conf)], capture_output=True, text=True, timeout=120, check=False)


def lines(proc: subprocess.CompletedProcess, name: str) -> str:
    """The output line of check ``name``."""
    found = [line for line in proc.stdout.splitlines() if line[6:].startswith(f"{name}:")]
    assert len(found) == 1, proc.stdout + proc.stderr
    return found[0]


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_status_is_ok_on_the_running_stack(aio, conf_copy):
    text = aio.kuryr_conf.read_text()
    conf = aio.kuryr_conf if "docker_uri" in text else conf_copy()
    proc = kuryr_status(conf)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for name in ("neutron", "ovs", "plugin-discovery", "plugin", "docker"):
        assert lines(proc, name).startswith("OK    "), proc.stdout


def test_status_finds_the_config_through_kuryr_aio_env(aio):
    """`eval "$(kuryr-aio env)"; kuryr status` with nothing else: no --config-file, no
    /etc/kuryr/kuryr.conf needed; KURYR_CONFIG_FILE names the stack's kuryr.conf."""
    if "docker_uri" not in aio.kuryr_conf.read_text():
        pytest.skip("the stack's kuryr.conf predates docker_uri: `kuryr-aio up` rewrites it")
    exports = subprocess.run([helpers.aio_command(), "env"], capture_output=True, text=True,
                             timeout=60, check=True).stdout
    assert f"export KURYR_CONFIG_FILE={aio.kuryr_conf}\n" in exports
    # The exports exactly as a shell evaluates them, and no other environment but PATH;
    # `python -m kuryr.cli` in the repository runs the code under test.
    proc = subprocess.run(["bash", "-c", exports + 'exec "$0" -m kuryr.cli status',
                           sys.executable], env={"PATH": os.environ["PATH"]}, cwd=ROOT,
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.splitlines()[0] == \
        f"config: {aio.kuryr_conf} (from KURYR_CONFIG_FILE)", proc.stdout
    for name in ("neutron", "ovs", "plugin-discovery", "plugin", "docker"):
        assert lines(proc, name).startswith("OK    "), proc.stdout
    assert lines(proc, "docker") == f"OK    docker: dockerd answers at {aio.docker_host}"


def test_neutron_on_a_closed_port_is_named_unreachable(conf_copy):
    url = f"http://127.0.0.1:{closed_port()}"
    # endpoint_override points the network API elsewhere with any auth_type.
    proc = kuryr_status(conf_copy(neutron={"endpoint": url, "endpoint_override": url}))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert lines(proc, "neutron") == \
        f"FAIL  neutron: Neutron at {url} is unreachable: connection refused"
    assert lines(proc, "docker").startswith("OK    "), "only Neutron is broken"


def test_missing_bridge_is_named(conf_copy):
    proc = kuryr_status(conf_copy(binding={"ovs_bridge": "br-kuryr-none"}))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert lines(proc, "ovs").startswith("FAIL  ovs: OVS bridge br-kuryr-none does not exist")


def test_socket_outside_dockers_plugin_dirs_is_named(conf_copy, tmp_path):
    sock = tmp_path / "kuryr.sock"
    proc = kuryr_status(conf_copy(DEFAULT={"kuryr_uri": f"unix://{sock}"}))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert lines(proc, "plugin-discovery").startswith(
        f"FAIL  plugin-discovery: plugin socket {sock} is not where Docker looks")
    assert "is `kuryr serve` running?" in lines(proc, "plugin")

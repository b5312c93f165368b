"""Kuryr's own Docker plugin, run from this checkout against the stack's Neutron."""

from __future__ import annotations

import http.client
import socket
import sys
from pathlib import Path

from kuryr.aio import procs
from kuryr.aio.layout import PUBLIC_NETWORK, Layout

PLUGIN_SOCKET = Path("/run/docker/plugins/kuryr.sock")

KURYR_CONF = """\
# Written by kuryr-aio: Kuryr against the all-in-one stack's no-auth Neutron.
[DEFAULT]
kuryr_uri = unix://{socket}
docker_uri = unix://{docker}
state_dir = {state}
docker_netns_dir = {netns}

[neutron]
auth_type = none
endpoint = {neutron}
vif_plugging_timeout = 30

[binding]
ovs_bridge = br-int

[publish]
# -p ports are also reachable from the external network through a floating IP.
floating_ip_network = {public}
"""


class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float = 5) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self._path)
        self.sock = sock


def plugin_answers(path: Path = PLUGIN_SOCKET) -> bool:
    conn = _UnixHTTPConnection(str(path))
    try:
        conn.request("POST", "/Plugin.Activate", body=b"")
        return conn.getresponse().status == 200
    finally:
        conn.close()


class KuryrPlugin:
    name = "kuryr"

    def __init__(self, layout: Layout) -> None:
        self.layout = layout
        self.pidfile = layout.pidfile("kuryr")

    @property
    def logs(self) -> list[Path]:
        return [self.layout.log("kuryr")]

    def problems(self) -> list[str]:
        if not procs.pid_alive(self.pidfile, "kuryr"):
            return ["the Kuryr plugin (kuryr serve) is not running"]
        try:
            plugin_answers()
        except OSError as exc:
            return [f"the Kuryr plugin does not answer on {PLUGIN_SOCKET}: {exc}"]
        return []

    @property
    def override_dir(self) -> Path:
        """Extra *.conf files read after kuryr.conf (tests point Kuryr elsewhere)."""
        return self.layout.base / "kuryr.conf.d"

    @property
    def config_args(self) -> list[str]:
        args = ["--config-file", str(self.layout.kuryr_conf)]
        if self.override_dir.is_dir():
            args += ["--config-dir", str(self.override_dir)]
        return args

    def write_config(self) -> None:
        self.layout.kuryr_conf.write_text(KURYR_CONF.format(
            socket=PLUGIN_SOCKET, docker=self.layout.docker_sock,
            state=self.layout.base / "kuryr",
            neutron=self.layout.neutron_url, netns="/var/run/docker/netns",
            public=PUBLIC_NETWORK))

    def up(self) -> None:
        self.write_config()
        if not procs.pid_alive(self.pidfile, "kuryr"):
            # A socket left by a killed plugin would answer "connection refused"
            # until the new one replaces it.
            PLUGIN_SOCKET.unlink(missing_ok=True)
            procs.spawn([sys.executable, "-m", "kuryr.cli", "serve", *self.config_args],
                        pidfile=self.pidfile, log=self.layout.log("kuryr"))
        if not procs.wait_for(self._answers_or_died, 60):
            raise procs.StackError(f"kuryr did not answer (log: {self.layout.log('kuryr')})")
        if not procs.running(self.pidfile):
            raise procs.StackError(f"kuryr exited at start (log: {self.layout.log('kuryr')})")

    def _answers_or_died(self) -> bool:
        if not procs.running(self.pidfile):
            return True
        try:
            return plugin_answers()
        except OSError:
            return False

    def down(self) -> None:
        procs.stop(self.pidfile, "kuryr", timeout=15)

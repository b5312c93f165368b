"""kuryr-libnetwork 18.0.0, the original, run beside Kuryr only to be measured.

It is installed from PyPI into its own venv, registered with the same dockerd
under the driver name ``kuryrlib`` (a spec file), and pointed at the same
Neutron and OVS.  Kuryr never imports it.  Configuration changes it needs on
this stack (all documented in docs/benchmarks.md):
- ``bindir`` points at the venv's libexec/kuryr (pip puts its OVS scripts there);
- ``[neutron] auth_type = none`` + ``endpoint`` (the stack's Neutron is noauth);
- ``docker network create`` always gets ``--gateway`` (it fails without one).
"""

from __future__ import annotations

import http.client
import sys
import time
from http import HTTPStatus
from pathlib import Path

from kuryr.aio import procs
from kuryr.aio.layout import Layout

VERSION = "18.0.0"
PORT = 23750
DRIVER = "kuryrlib"
SPEC_DIR = Path("/etc/docker/plugins")

CONFIG = """\
[DEFAULT]
kuryr_uri = http://127.0.0.1:{port}
bindir = {bindir}
capability_scope = local
process_external_connectivity = False
debug = False

[neutron]
auth_type = none
endpoint = {neutron}
default_subnetpool_v4 = kuryr
default_subnetpool_v6 = kuryr6
vif_plugging_is_fatal = False
vif_plugging_timeout = 0

[binding]
default_driver = kuryr.lib.binding.drivers.veth
"""


class KuryrLibnetwork:
    def __init__(self, layout: Layout, driver: str = DRIVER) -> None:
        """``driver``: the name dockerd knows it by (``kuryr`` in the migration
        test, where it stands where it stood before Kuryr replaced it)."""
        self.layout = layout
        self.venv = layout.base / "venvs" / f"kuryr-libnetwork-{VERSION}"
        self.conf = layout.base / "kuryr-libnetwork.conf"
        self.pidfile = layout.pidfile("kuryr-libnetwork")
        self.spec = SPEC_DIR / f"{driver}.spec"
        self.log = layout.log("kuryr-libnetwork")

    def install(self) -> None:
        marker = self.venv / ".installed"
        if marker.exists():
            return
        log = self.layout.log("kuryr-libnetwork-install")
        procs.run([sys.executable, "-m", "venv", str(self.venv)], log=log)
        procs.run([str(self.venv / "bin" / "pip"), "install", "-q",
                   f"kuryr-libnetwork=={VERSION}"], log=log, timeout=1800)
        marker.write_text(VERSION)

    def answers(self) -> bool:
        conn = http.client.HTTPConnection("127.0.0.1", PORT, timeout=5)
        try:
            conn.request("POST", "/Plugin.Activate", body=b"")
            return conn.getresponse().status == HTTPStatus.OK
        except OSError:
            return False
        finally:
            conn.close()

    def start(self) -> None:
        self.install()
        self.conf.write_text(CONFIG.format(
            port=PORT, bindir=self.venv / "libexec" / "kuryr",
            neutron=self.layout.neutron_url))
        SPEC_DIR.mkdir(parents=True, exist_ok=True)
        self.spec.write_text(f"http://127.0.0.1:{PORT}\n")
        for _attempt in range(3):  # its port may still be held by a previous run
            if not procs.pid_alive(self.pidfile, "kuryr-server"):
                procs.spawn([str(self.venv / "bin" / "kuryr-server"), "--config-file",
                             str(self.conf)], pidfile=self.pidfile, log=self.log,
                            env={"PATH": f"{self.venv / 'bin'}:/usr/sbin:/usr/bin:/sbin:/bin"})
            procs.wait_for(lambda: self.answers() or not procs.running(self.pidfile), 180)
            if self.answers():
                return
            time.sleep(2)
        raise procs.StackError(f"kuryr-libnetwork did not start (log: {self.log})")

    def stop(self) -> None:
        procs.stop(self.pidfile, "kuryr-server")
        self.spec.unlink(missing_ok=True)

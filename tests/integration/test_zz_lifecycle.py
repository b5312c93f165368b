"""`kuryr-aio down` stops exactly what `up` started and leaves nothing behind;
`up` is idempotent.  Runs last (file name) because it restarts the stack."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

from pyroute2 import IPRoute, netns

from kuryr.aio.layout import OUTSIDE_NETNS

from . import helpers

OUR_DAEMONS = ("ovsdb-server", "ovs-vswitchd", "ovn-northd", "ovn-controller", "mariadbd",
               "neutron-ovn-maintenance-worker", "kuryr_aio_neutron_wsgi", "dockerd",
               "kuryr serve", "kuryr_aio_keystone_wsgi")
OUR_LINKS = ("ovs-netdev", "br-int", "br-ex", "docker0", "aio-out-br")


def running_daemons() -> list[str]:
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            state = (proc / "stat").read_text().rsplit(")", 1)[-1].split()[0]
        except OSError:
            continue
        if state != "Z" and any(d in cmdline for d in OUR_DAEMONS):
            found.append(cmdline.strip())
    return found


def aio(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([helpers.aio_command(), *args], capture_output=True, text=True,
                          timeout=900, check=False)


def test_down_leaves_nothing_and_up_is_idempotent(stack):
    down = aio("down")
    assert down.returncode == 0, down.stdout + down.stderr
    try:
        assert running_daemons() == []
        assert OUTSIDE_NETNS not in netns.listnetns()
        with IPRoute() as ipr:
            names = {link.get_attr("IFLA_IFNAME") for link in ipr.get_links()}
        assert not names & set(OUR_LINKS)
        status = aio("status")
        assert status.returncode != 0
        assert "DOWN" in status.stdout
    finally:
        first = aio("up")
    assert first.returncode == 0, first.stdout + first.stderr
    t0 = time.monotonic()
    second = aio("up")
    elapsed = time.monotonic() - t0
    assert second.returncode == 0, second.stdout + second.stderr
    assert "starting" not in second.stdout
    assert elapsed < 10, f"a second `up` took {elapsed:.1f} s"

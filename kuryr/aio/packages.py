"""Debian packages the all-in-one stack runs on; installed only when missing."""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path

from kuryr.aio import procs
from kuryr.aio.layout import Layout

# command that must exist -> Debian package providing it
REQUIRED = {
    "ovs-vswitchd": "openvswitch-switch",
    "ovn-northd": "ovn-central",
    "ovn-controller": "ovn-host",
    "mariadbd": "mariadb-server",
    "dockerd": "docker.io",
    "busybox": "busybox-static",
    "ip": "iproute2",
    # Packaging: the Debian tree of the managed plugin and the Kubernetes
    # image (kuryr/aio/rootfs.py), and the devstack plugin's lint.
    "debootstrap": "debootstrap",
    "shellcheck": "shellcheck",
}
SEARCH_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def missing_packages(required: Mapping[str, str] = REQUIRED) -> list[str]:
    """The packages of ``required`` (command -> package) whose command is not found."""
    return sorted({pkg for cmd, pkg in required.items()
                   if shutil.which(cmd, path=SEARCH_PATH) is None})


def install(packages: Sequence[str], *, log: Path) -> None:
    """apt-get install ``packages`` (root only), after refreshing the indexes."""
    if not packages:
        return
    if os.geteuid() != 0:
        raise procs.StackError(f"installing {' '.join(packages)} needs root")
    env = {"DEBIAN_FRONTEND": "noninteractive"}
    procs.run(["apt-get", "update", "-q"], log=log, env=env, timeout=900)
    procs.run(["apt-get", "install", "-y", "-q", "--no-install-recommends", *packages],
              log=log, env=env, timeout=1800)


class Packages:
    name = "packages"

    def __init__(self, layout: Layout) -> None:
        self.layout = layout

    @property
    def logs(self) -> list:
        return [self.layout.log("apt")]

    def problems(self) -> list[str]:
        missing = missing_packages()
        return [f"Debian packages not installed: {' '.join(missing)}"] if missing else []

    def down(self) -> None:
        """Installed packages stay: they are software, not state of the stack."""

    def up(self) -> None:
        install(missing_packages(), log=self.layout.log("apt"))

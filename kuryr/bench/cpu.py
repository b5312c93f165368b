"""CPU seconds by stack component over a measured window, read from /proc.

On a 2-core all-in-one, what a burst of pods costs the machine decides how fast
it starts: this says which component spent it.  A process's children that
exited and were reaped count for it (cutime/cstime: runc for containerd, the
CNI executables for their runtime); one that started and ended inside the
window without a surviving parent is missed (nothing here does that).
"""

from __future__ import annotations

import collections
import os
from pathlib import Path

# First match wins: (component, words one of which is in the command line).
# Matched against the executable's name first (kube-apiserver's options name
# kubelet and etcd), then against the whole command line (Python programs).
COMPONENTS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("kuryr-cni-daemon", ("cni-daemon",)),
    ("kuryr-k8s-controller", ("k8s-controller",)),
    ("kuryr-serve", ("kuryr.cli serve", "kuryr serve")),
    ("neutron", ("neutron", "kuryr_aio_neutron_wsgi")),
    ("kube-apiserver", ("kube-apiserver",)),
    ("kube-controller-manager", ("kube-controller-manager",)),
    ("kube-scheduler", ("kube-scheduler",)),
    ("kubelet", ("kubelet",)),
    ("containerd", ("containerd",)),
    ("etcd", ("etcd",)),
    ("ovn", ("ovn-", "/run/ovn/")),
    ("ovs", ("ovs-vswitchd", "/run/openvswitch/db.sock")),  # its ovsdb-server
    ("mariadb", ("mariadbd", "mysqld")),
    ("dockerd", ("dockerd",)),
)
# PID 1 reaps orphans: containerd's shims (which detach) end up counted there.
INIT = "init (reaped orphans: container shims)"


def component_of(cmdline: str) -> str:
    executable = Path(cmdline.split(" ", 1)[0]).name
    for text in (executable, cmdline):
        for name, words in COMPONENTS:
            if any(word in text for word in words):
                return name
    return "other"


def cpu_seconds(proc: Path = Path("/proc")) -> dict[str, float]:
    """CPU seconds each component has used so far (its processes, and their
    reaped children)."""
    tick = os.sysconf("SC_CLK_TCK")
    used: dict[str, float] = collections.defaultdict(float)
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(
                errors="replace")
        except OSError:  # exited meanwhile
            continue
        fields = stat.rsplit(")", 1)[1].split()
        # utime stime cutime cstime: fields 14-17 of proc(5), 12-15 after the name
        ticks = sum(int(value) for value in fields[11:15])
        name = INIT if entry.name == "1" else component_of(cmdline or stat)
        used[name] += ticks / tick
    return dict(used)


def spent(before: dict[str, float], after: dict[str, float], top: int = 8) \
        -> dict[str, float]:
    """CPU seconds per component between two readings, largest first (a
    component whose processes all exited meanwhile reads as 0, not negative)."""
    delta = {name: round(max(0.0, after.get(name, 0.0) - before.get(name, 0.0)), 1)
             for name in set(before) | set(after)}
    ranked = sorted(delta.items(), key=lambda item: -item[1])
    return {name: value for name, value in ranked[:top] if value > 0}

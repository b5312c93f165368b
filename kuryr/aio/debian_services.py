"""Debian's own services of the packages the stack runs on.

On a host booted with systemd, installing docker.io, openvswitch-switch,
ovn-central, ovn-host, mariadb-server or etcd-server enables and starts Debian's units of
them.  Those would run beside the stack's own daemons and fight over the same
paths (/run/openvswitch, /run/ovn, /var/run/docker, /run/docker/plugins), or
just run for nothing (MariaDB).  `up` stops, disables and masks them (masked,
a package upgrade does not start them again) and says so in one line.
Without systemd as PID 1 (containers, CI sandboxes) nothing runs them, and
nothing is done.

containerd.service is left alone: the stack's dockerd uses a running
containerd instead of starting its own, and it may serve others (Kubernetes).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path

from kuryr.aio import procs

DEBIAN_UNITS = (
    "docker.socket", "docker.service",
    "openvswitch-switch.service", "ovs-vswitchd.service", "ovsdb-server.service",
    "ovn-central.service", "ovn-northd.service",
    "ovn-ovsdb-server-nb.service", "ovn-ovsdb-server-sb.service",
    "ovn-host.service", "ovn-controller.service",
    "mariadb.service",
    # etcd-server (`up --k8s`): Debian's etcd would hold 127.0.0.1:2379.
    "etcd.service",
)
RUNNING = frozenset({"active", "activating", "reloading"})
ENABLED = frozenset({"enabled", "enabled-runtime", "linked", "linked-runtime"})
INIT_COMM = Path("/proc/1/comm")


def systemd_is_init(comm: Path = INIT_COMM) -> bool:
    try:
        return comm.read_text().strip() == "systemd"
    except OSError:
        return False


def parse_show(text: str) -> dict[str, dict[str, str]]:
    """`systemctl show -p Id,...` output (one block per unit) as {Id: {property: value}}."""
    units: dict[str, dict[str, str]] = {}
    for block in text.split("\n\n"):
        props = dict(line.split("=", 1) for line in block.splitlines() if "=" in line)
        if props.get("Id"):
            units[props["Id"]] = props
    return units


def units_to_stop(states: Mapping[str, Mapping[str, str]]) -> list[str]:
    """Those of ``states`` that run or would start at boot (masked or absent ones do not)."""
    return [unit for unit, props in states.items()
            if props.get("ActiveState") in RUNNING or props.get("UnitFileState") in ENABLED]


def unit_states(units: tuple[str, ...] = DEBIAN_UNITS) -> dict[str, dict[str, str]]:
    out = procs.run(["systemctl", "show", "--property=Id,ActiveState,UnitFileState",
                     "--", *units], timeout=30)
    return parse_show(out)


def stop_debian_services(log: Callable[[str], None],
                         comm: Path = INIT_COMM) -> list[str]:
    """Stop, disable and mask Debian's units that run beside the stack; returns them."""
    if not systemd_is_init(comm):
        return []
    units = units_to_stop(unit_states())
    if not units:
        return []
    procs.run(["systemctl", "disable", "--now", "--", *units], timeout=120)
    # Best effort: a unit file an admin put in /etc/systemd/system cannot be masked.
    procs.run(["systemctl", "mask", "--", *units], timeout=30, check=False)
    log(f"stopped and disabled Debian's own {' '.join(units)}: they would run beside the "
        "stack's own dockerd, Open vSwitch, OVN and MariaDB and take their sockets "
        f"(to undo after `kuryr-aio down`: systemctl unmask {' '.join(units)}; "
        f"systemctl enable --now {' '.join(units)})")
    return units

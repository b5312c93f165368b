"""The namespaces of a simulated machine (a VM, a host): its init, and the
launcher of everything else.  NETNS, the machine's network namespace
(kuryr-vm-NAME, kuryr-host-NAME), names the machine.

``python -m kuryr.aio.vm_exec hold NETNS --run-dir DIR`` is the machine's
init: it makes the machine's mount namespace (its own Docker plugin
directories, /run/openvswitch and /run/containerd bound over the host's; /sys
remounted for the machine's network namespace), enters NETNS and sleeps,
keeping both alive.

``python -m kuryr.aio.vm_exec run NETNS --run-dir DIR -- ARGV...`` enters the
init's namespaces and executes ARGV there (an argv list, never a shell line):
how every process of the machine is started.

Only light imports: ``run`` must still be single-threaded when it enters the
mount namespace.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from kuryr.aio import namespaces
from kuryr.aio.layout import (
    NAMED_NETNS,
    check_machine_netns,
    machine_label,
    vm_init_ready,
    vm_private_mounts,
)


def init_expect(netns: str) -> str:
    """What the init's command line holds (a whole argument each)."""
    return f"kuryr.aio.vm_exec hold {netns} "


def hold(netns: str, run_dir: Path) -> int:
    netns_fd = os.open(NAMED_NETNS / netns, os.O_RDONLY | os.O_CLOEXEC)
    namespaces.unshare(namespaces.CLONE_NEWNS)
    # Nothing mounted here reaches the host, nor the other way round (the machine's
    # dockerd mounts its containers' file systems and namespaces).
    namespaces.mount(None, "/", flags=namespaces.MS_REC | namespaces.MS_PRIVATE)
    for inside, own in vm_private_mounts(run_dir).items():
        own.mkdir(parents=True, exist_ok=True)
        inside.mkdir(parents=True, exist_ok=True)  # a mount point must exist
        namespaces.mount(own, inside, flags=namespaces.MS_BIND)
    namespaces.setns(netns_fd, namespaces.CLONE_NEWNET)
    os.close(netns_fd)
    remount_sys(run_dir / "cgroup")
    vm_init_ready(run_dir).write_text(f"{os.getpid()}\n")
    print(f"{machine_label(netns)}: mount namespace ready, holding it", flush=True)
    while True:
        signal.pause()


def remount_sys(staging: Path) -> None:
    """A sysfs of the machine's network namespace on /sys (its /sys/class/net
    lists the machine's interfaces), as `ip netns exec` mounts one; unlike it, the cgroup
    hierarchies mounted under /sys/fs/cgroup are kept (dockerd and runc need
    them: moved aside, then back onto the new sysfs)."""
    cgroup = Path("/sys/fs/cgroup")
    keep_cgroups = os.path.ismount(cgroup)
    if keep_cgroups:
        staging.mkdir(parents=True, exist_ok=True)
        namespaces.mount(cgroup, staging, flags=namespaces.MS_BIND | namespaces.MS_REC)
    namespaces.umount("/sys", namespaces.MNT_DETACH)
    namespaces.mount("sysfs", "/sys", "sysfs")
    if keep_cgroups:
        namespaces.mount(staging, cgroup, flags=namespaces.MS_MOVE)


def init_pid(netns: str, run_dir: Path) -> int:
    """The PID of the machine's init, once its namespaces are complete."""
    try:
        pid = int(vm_init_ready(run_dir).read_text().split()[0])
    except (OSError, ValueError, IndexError) as exc:
        raise SystemExit(f"{machine_label(netns)} is not running (no init in {run_dir})") \
            from exc
    return pid


def _is_init(pid: int, netns: str) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return False
    return init_expect(netns) in cmdline


def enter(netns: str, run_dir: Path) -> None:
    """This process into the machine's network and mount namespaces."""
    pid = init_pid(netns, run_dir)
    net = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    mnt = os.open(f"/proc/{pid}/ns/mnt", os.O_RDONLY | os.O_CLOEXEC)
    # Checked after opening: the namespaces are those of the process checked.
    if not _is_init(pid, netns):
        raise SystemExit(f"{machine_label(netns)}: PID {pid} is not its init "
                         f"(stale {run_dir}/init.ready)")
    namespaces.setns(net, namespaces.CLONE_NEWNET)
    namespaces.setns(mnt, namespaces.CLONE_NEWNS)
    os.close(net)
    os.close(mnt)
    os.chdir("/")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m kuryr.aio.vm_exec",
                                description="a simulated machine's init, or a command run in it")
    sub = p.add_subparsers(dest="command", required=True)
    for command in ("hold", "run"):
        cmd = sub.add_parser(command)
        cmd.add_argument("netns", type=check_machine_netns,
                         help="the machine's network namespace: kuryr-vm-NAME, kuryr-host-NAME")
        cmd.add_argument("--run-dir", type=Path, required=True)
        if command == "run":
            cmd.add_argument("argv", nargs="+", help="the command (after --)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.command == "hold":
        return hold(args.netns, args.run_dir)
    enter(args.netns, args.run_dir)
    try:
        os.execvp(args.argv[0], args.argv)  # noqa: S606 - an argv list, no shell
    except OSError as exc:
        print(f"{machine_label(args.netns)}: cannot run {args.argv[0]}: {exc}", file=sys.stderr)
        return 127


if __name__ == "__main__":
    sys.exit(main())

"""Linux namespaces and mounts through libc (Python 3.11 has no os.setns,
os.unshare or mount), for the simulated VMs.

Kept free of heavy imports: ``kuryr.aio.vm_exec`` loads it in every process it
starts inside a VM, and must still be single-threaded when it enters the VM's
mount namespace (the kernel refuses setns(CLONE_NEWNS) to a threaded process).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import socket
from pathlib import Path

from kuryr.binding import netlink

CLONE_NEWNS = 0x00020000
CLONE_NEWNET = 0x40000000
MS_BIND = 0x1000
MS_MOVE = 0x2000
MS_REC = 0x4000
MS_PRIVATE = 1 << 18
MS_SHARED = 1 << 20
MNT_DETACH = 2


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def _check(result: int, what: str) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def setns(fd: int, nstype: int) -> None:
    _check(_libc().setns(fd, nstype), "setns")


def unshare(flags: int) -> None:
    _check(_libc().unshare(flags), "unshare")


def mount(source: str | Path | None, target: str | Path, fstype: str | None = None,
          flags: int = 0) -> None:
    libc = _libc()
    libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p,
                           ctypes.c_ulong, ctypes.c_void_p]
    _check(libc.mount(None if source is None else os.fsencode(source), os.fsencode(target),
                      None if fstype is None else fstype.encode(), flags, None),
           f"mount {source} on {target}")


def mount_points(mountinfo: str) -> dict[str, set[str]]:
    """Mount point -> its propagation tags ("shared:N", "master:N"...) as
    /proc/self/mountinfo gives them (field 5; optional fields after 6)."""
    found: dict[str, set[str]] = {}
    for line in mountinfo.splitlines():
        fields = line.split()
        if "-" not in fields[6:]:
            continue
        point = fields[4].replace("\\040", " ")
        found[point] = {tag.split(":")[0] for tag in fields[6:fields.index("-")]}
    return found


def make_shared_mount(path: Path) -> bool:
    """Make ``path`` a mount point whose mounts propagate to its peers and
    slaves (a bind mount of itself, shared); whether anything was changed.
    systemd makes every mount shared at boot; a host whose PID 1 is not
    systemd leaves them private."""
    points = mount_points(Path("/proc/self/mountinfo").read_text())
    if "shared" in points.get(str(path), set()):
        return False
    path.mkdir(parents=True, exist_ok=True)
    if str(path) not in points:
        mount(path, path, flags=MS_BIND)
    mount(None, path, flags=MS_SHARED)
    return True


def umount(target: str | Path, flags: int = 0) -> None:
    _check(_libc().umount2(os.fsencode(target), flags), f"umount {target}")


def netns_entered(netns_path: str | Path) -> contextlib.AbstractContextManager[None]:
    """This thread in the network namespace at ``netns_path`` for the ``with``
    block, then back in its own: sockets made inside stay in that namespace."""
    return netlink.thread_in_netns(netns_path)


def socket_in(netns_path: str | Path, family: int = socket.AF_INET,
              kind: int = socket.SOCK_STREAM) -> socket.socket:
    """A socket of the network namespace at ``netns_path``."""
    with netns_entered(netns_path):
        return socket.socket(family, kind)


def connects(netns_path: str | Path, port: int, host: str = "127.0.0.1",
             timeout: float = 2) -> bool:
    """Whether something accepts TCP connections on host:port in that namespace."""
    with socket_in(netns_path) as sock:
        sock.settimeout(timeout)
        try:
            sock.connect((host, port))
        except OSError:
            return False
        return True


def tx_checksum(netns_path: str | Path, ifname: str) -> bool:
    """Whether ``ifname`` (in that namespace) leaves TCP/UDP checksums to the NIC."""
    with socket_in(netns_path, socket.AF_INET, socket.SOCK_DGRAM) as sock:
        return bool(netlink.ethtool_value(sock, ifname, netlink.ETHTOOL_GTXCSUM))


def disable_tx_checksum(netns_path: str | Path, ifname: str) -> None:
    """`ethtool -K IFNAME tx off` (which turns off TSO with it): frames leave with
    full checksums.  A veth whose other end the Open vSwitch userspace datapath
    reads passes "checksum later" frames on, which OVS 3.1 mishandles (TCP fails
    while ping works; across a tunnel such frames are dropped)."""
    with socket_in(netns_path, socket.AF_INET, socket.SOCK_DGRAM) as sock:
        netlink.ethtool_value(sock, ifname, netlink.ETHTOOL_STXCSUM, 0)


def write_sysctls(netns_path: str | Path, values: dict[str, str]) -> None:
    """Write /proc/sys/net/... keys (relative to /proc/sys) of that network
    namespace: /proc/sys/net is the opening thread's namespace's.  Keys whose
    file does not exist (IPv6 disabled altogether) are skipped."""
    with netns_entered(netns_path):
        for key, value in values.items():
            path = Path("/proc/sys") / key
            if path.exists():
                path.write_text(value)


def bridge_port_sysctls(ifname: str) -> dict[str, str]:
    """A machine's kernel must ignore what arrives on a port of its userspace
    switch: ovs-vswitchd reads the port through a packet socket, and the kernel
    gets every frame as well.  A VM's eth0 has the VM's MAC (Kuryr finds the
    VM's port by it), so without this the kernel answers on eth0 too what
    reaches its address on br-vm: two replies to every ping (weak host model),
    two ARP replies, and an IPv6 link-local address twice."""
    return {f"net/ipv4/conf/{ifname}/rp_filter": "1",  # its sources route via the bridge
            f"net/ipv4/conf/{ifname}/arp_ignore": "1",  # the port has no address to answer for
            f"net/ipv6/conf/{ifname}/disable_ipv6": "1"}

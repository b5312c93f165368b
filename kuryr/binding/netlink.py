"""veth pairs and namespaces through netlink (pyroute2)."""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import ipaddress
import logging
import os
import socket
import struct
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from socket import AF_INET, AF_INET6
from typing import Any

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from kuryr.binding.vif import VIF

ENOENT = 2
ENODEV = 19
EEXIST = 17


LOG = logging.getLogger(__name__)
CLONE_NEWNET = 0x40000000
THREAD_NETNS = "/proc/thread-self/ns/net"
NAMED_NETNS = "/var/run/netns"  # where `ip netns` (and pyroute2) keep named ones
_LIBC = ctypes.CDLL(None, use_errno=True)


class LinkError(Exception):
    """A netlink operation failed; the message names the interface."""


def _setns(fd: int) -> None:
    if _LIBC.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


@contextlib.contextmanager
def in_netns(netns_path: str) -> Iterator[IPRoute]:
    """A netlink socket of the namespace at ``netns_path``, or named so under
    /var/run/netns (`ip netns`'s), never created.

    The socket is made by this thread, having entered the namespace for that
    one call and left it at once (a socket stays in the namespace it was made
    in).  pyroute2's NetNS forks the whole process for it instead: ~12 ms of
    CPU per call in a small process, more in a daemon with a large heap, twice
    per pod ADD, on the CPU a burst of pods needs."""
    path = netns_path if os.sep in netns_path else f"{NAMED_NETNS}/{netns_path}"
    with thread_in_netns(path):
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, socket.NETLINK_ROUTE)
    try:
        ipr = IPRoute(fileno=sock.fileno())
    except Exception:
        sock.close()
        raise
    sock.detach()  # the IPRoute owns the descriptor now
    with ipr:
        yield ipr


@contextlib.contextmanager
def thread_in_netns(path: str | os.PathLike[str]) -> Iterator[None]:
    """This thread in the network namespace at ``path`` for the ``with`` block,
    then back in its own (sockets made inside stay in that namespace)."""
    target = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        own = os.open(THREAD_NETNS, os.O_RDONLY | os.O_CLOEXEC)
        try:
            _setns(target)
            try:
                yield
            finally:
                _return_to(own)
        finally:
            os.close(own)
    finally:
        os.close(target)


def _return_to(own: int) -> None:
    try:
        _setns(own)
    except OSError:
        # Cannot happen (the thread left this very namespace a moment ago), and
        # must not go on: this thread's next veth or OVS port would be made in
        # a pod's namespace.  The supervisor restarts the daemon, which
        # recovers its state from OVS and Neutron as after a kill -9.
        LOG.critical("cannot return to the daemon's network namespace: exiting")
        os._exit(70)


def create_veth(vif: VIF) -> bool:
    """Create the VIF's veth pair (host end up); an existing pair is kept.

    True when this call made the pair, False when it was already there.
    """
    if link_exists(vif.host_ifname):  # a pooled port's veth: ~0.01 ms, no netlink socket
        deafen_to_ipv6(vif.host_ifname)  # one made by an older Kuryr, too
        return False
    with IPRoute() as ipr:
        if ipr.link_lookup(ifname=vif.host_ifname):
            return False
        peer: dict[str, Any] = {"ifname": vif.container_ifname, "address": vif.mac}
        attrs: dict[str, Any] = {"ifname": vif.host_ifname, "kind": "veth", "peer": peer}
        if vif.mtu:
            attrs["mtu"] = vif.mtu
            peer["mtu"] = vif.mtu
        made = True
        try:
            ipr.link("add", **attrs)
        except NetlinkError as exc:
            if exc.code != EEXIST:
                raise LinkError(f"cannot create veth {vif.host_ifname}: {exc}") from exc
            made = False  # made by a concurrent call
        try:
            deafen_to_ipv6(vif.host_ifname)
            idx = ipr.link_lookup(ifname=vif.host_ifname)[0]
            ipr.link("set", index=idx, state="up")
        except (NetlinkError, IndexError) as exc:
            if made:  # not left half made
                with contextlib.suppress(NetlinkError, IndexError):
                    ipr.link("del", index=ipr.link_lookup(ifname=vif.host_ifname)[0])
            raise LinkError(f"cannot set veth {vif.host_ifname} up: {exc}") from exc
        return made


# The network sysctls, as the calling thread's namespace sees them.  A container
# runtime mounts /proc/sys read-only in an unprivileged container (and refuses
# mounts inside /proc): the node daemon's DaemonSet mounts the host's
# /proc/sys/net elsewhere and names it in KURYR_PROC_SYS_NET.
PROC_SYS_NET = Path(os.environ.get("KURYR_PROC_SYS_NET") or "/proc/sys/net")
IPV6_CONF = PROC_SYS_NET / "ipv6" / "conf"


def deafen_to_ipv6(ifname: str, conf_dir: Path = IPV6_CONF) -> None:
    """The host end of a container's veth carries the container's frames into the
    host's kernel as well as into the switch: without this, a router
    advertisement sent by a container would give the host an address and a
    default route through it.  The host end needs no IP at all, so IPv6 is off
    on it (before it comes up: no link-local address either)."""
    conf = conf_dir / ifname
    if not conf.is_dir():
        return  # IPv6 is disabled on this host altogether
    for key, value in (("accept_ra", "0"), ("autoconf", "0"), ("disable_ipv6", "1")):
        (conf / key).write_text(value)


def delete_link(ifname: str) -> bool:
    """Delete a link (and so its veth peer); False when it did not exist."""
    with IPRoute() as ipr:
        found = ipr.link_lookup(ifname=ifname)
        for idx in found:
            try:
                ipr.link("del", index=idx)
            except NetlinkError as exc:
                # ENODEV: gone between the lookup and the delete (a veth whose
                # peer's namespace was just removed goes with it).
                if exc.code not in (ENOENT, ENODEV):
                    raise LinkError(f"cannot delete {ifname}: {exc}") from exc
        return bool(found)


def link_exists(ifname: str) -> bool:
    """In the host's namespace.  One ioctl (if_nametoindex): a hundred times
    cheaper than opening a netlink socket, and on every container's path."""
    try:
        socket.if_nametoindex(ifname)
    except OSError:
        return False
    return True


def attach_to_linux_bridge(ifname: str, bridge: str) -> None:
    with IPRoute() as ipr:
        br = ipr.link_lookup(ifname=bridge)
        if not br:
            raise LinkError(f"Linux bridge {bridge} does not exist")
        idx = ipr.link_lookup(ifname=ifname)
        if not idx:
            raise LinkError(f"interface {ifname} does not exist")
        try:
            ipr.link("set", index=idx[0], master=br[0], state="up")
        except NetlinkError as exc:
            raise LinkError(f"cannot attach {ifname} to Linux bridge {bridge}: {exc}") from exc


def move_into_netns(ifname: str, netns_path: str, new_name: str,
                    addresses: Iterable[str], gateways: Iterable[str] = ()) -> None:
    """Move ``ifname`` into a namespace, rename it, address it and set default routes.

    Used where Kuryr configures the container side itself (CNI, tests);
    Docker does this on its own after Join.
    """
    with IPRoute() as ipr:
        idx = ipr.link_lookup(ifname=ifname)
        if not idx:
            raise LinkError(f"interface {ifname} does not exist")
        ns_name = netns_path if os.sep not in netns_path else None
        # O_NONBLOCK: a FIFO at the path must not hang this thread.
        fd = None if ns_name else os.open(netns_path, os.O_RDONLY | os.O_NONBLOCK)
        try:
            ipr.link("set", index=idx[0], net_ns_fd=ns_name or fd)
        finally:
            if fd is not None:
                os.close(fd)
    with in_netns(netns_path) as ns:
        idx = ns.link_lookup(ifname=ifname)[0]
        ns.link("set", index=idx, ifname=new_name)
        for address in addresses:
            iface = ipaddress.ip_interface(address)
            ns.addr("add", index=idx, address=str(iface.ip), prefixlen=iface.network.prefixlen)
        ns.link("set", index=idx, state="up")
        lo = ns.link_lookup(ifname="lo")[0]
        ns.link("set", index=lo, state="up")
        for gateway in gateways:
            ipv6 = isinstance(ipaddress.ip_address(gateway), ipaddress.IPv6Address)
            family = AF_INET6 if ipv6 else AF_INET
            ns.route("add", dst="default", gateway=gateway, family=family)


def address_host_interface(ifname: str, address: str, mtu: int | None = None,
                           timeout: float = 10.0) -> None:
    """Give the host's ``ifname`` the address ``address`` (CIDR form) and bring it
    up; idempotent.  Waits for the device: Open vSwitch makes an internal
    interface a moment after the transaction that adds it."""
    iface = ipaddress.ip_interface(address)
    deadline = time.monotonic() + timeout
    with IPRoute() as ipr:
        while not (idx := ipr.link_lookup(ifname=ifname)):
            if time.monotonic() > deadline:
                raise LinkError(f"interface {ifname} did not appear within {timeout} s")
            time.sleep(0.05)
        if mtu:
            ipr.link("set", index=idx[0], mtu=mtu)
        ipr.link("set", index=idx[0], state="up")
        if not ipr.get_addr(index=idx[0], address=str(iface.ip)):
            ipr.addr("add", index=idx[0], address=str(iface.ip),
                     prefixlen=iface.network.prefixlen)


def route_via(ifname: str, prefixes: list[str], gateway: str) -> None:
    """Routes in the host's namespace to ``prefixes`` via ``gateway`` on ``ifname``;
    idempotent (replaced when they exist)."""
    with IPRoute() as ipr:
        idx = ipr.link_lookup(ifname=ifname)
        if not idx:
            raise LinkError(f"interface {ifname} does not exist")
        for prefix in prefixes:
            ipr.route("replace", dst=prefix, gateway=gateway, oif=idx[0])


def link_names() -> set[str]:
    """Names of the links in the host's namespace."""
    with IPRoute() as ipr:
        return {str(link.get_attr("IFLA_IFNAME")) for link in ipr.get_links()}


def interface_in_netns(netns_path: str, ifname: str) -> tuple[str, list[str]] | None:
    """The MAC and addresses (address/prefixlen) of ``ifname`` in the namespace at
    ``netns_path`` (which must exist: it is never created), None when there is no
    such interface."""
    with in_netns(netns_path) as ns:
        idx = ns.link_lookup(ifname=ifname)
        if not idx:
            return None
        link = ns.get_links(idx[0])[0]
        addresses = [f"{a.get_attr('IFA_ADDRESS')}/{a['prefixlen']}"
                     for a in ns.get_addr(index=idx[0])]
        return str(link.get_attr("IFLA_ADDRESS")), addresses


def move_out_of_netns(netns_path: str, ifname: str, host_name: str) -> bool:
    """Undo move_into_netns: ``ifname`` leaves the namespace for this process's
    own, without addresses, down and named ``host_name`` (renamed first: the
    host may have an interface of the container's name, eth0).  False when the
    namespace has no ``ifname``."""
    with in_netns(netns_path) as ns:
        idx = ns.link_lookup(ifname=ifname)
        if not idx:
            return False
        ns.flush_addr(index=idx[0])
        ns.link("set", index=idx[0], state="down")
        ns.link("set", index=idx[0], ifname=host_name)
        ns.link("set", index=idx[0], net_ns_pid=os.getpid())
        return True


# -- nested: a container's device made on the VM's NIC ------------------------------------------

def child_link_request(ifname: str, parent_index: int, kind: str, *, vlan_id: int | None = None,
                       mac: str = "", mtu: int | None = None) -> dict[str, Any]:
    """The RTM_NEWLINK attributes of a container's device on the VM's NIC:
    kind "vlan" (802.1Q, the sub-port's VLAN id, the port's MAC) or "ipvlan"
    (L2 mode: the VM NIC's own MAC, which is the only one Neutron 29 with OVN
    lets a VM port's allowed address pairs carry)."""
    attrs: dict[str, Any] = {"ifname": ifname, "kind": kind, "link": parent_index}
    if kind == "vlan":
        if vlan_id is None or not 1 <= vlan_id <= 4094:  # noqa: PLR2004 - 802.1Q's range
            raise LinkError(f"cannot create {ifname}: VLAN id {vlan_id} is not 1-4094")
        attrs["vlan_id"] = vlan_id
    elif kind == "ipvlan":
        attrs["ipvlan_mode"] = 0  # IPVLAN_MODE_L2
    else:
        raise LinkError(f"cannot create {ifname}: unknown device kind {kind!r}")
    if mac and kind == "vlan":
        attrs["address"] = mac
    if mtu:
        attrs["mtu"] = mtu
    return attrs


def create_child_link(ifname: str, parent: str, kind: str, *, vlan_id: int | None = None,
                      mac: str = "", mtu: int | None = None) -> bool:
    """Make the container's device on ``parent`` (kept down: Docker moves it into
    the container and brings it up there); True when this call made it."""
    with IPRoute() as ipr:
        if ipr.link_lookup(ifname=ifname):
            return False
        found = ipr.link_lookup(ifname=parent)
        if not found:
            raise LinkError(f"cannot create {ifname}: the VM's interface {parent} does not "
                            "exist ([binding] link_iface)")
        try:
            ipr.link("add", **child_link_request(ifname, found[0], kind, vlan_id=vlan_id,
                                                 mac=mac, mtu=mtu))
        except NetlinkError as exc:
            if exc.code == EEXIST:
                return False
            raise LinkError(f"cannot create {kind} device {ifname} on {parent}: {exc}") \
                from exc
        return True


SIOCETHTOOL = 0x8946
ETHTOOL_GTXCSUM = 0x16
ETHTOOL_STXCSUM = 0x17
IFNAMSIZ = 16


def ethtool_value(sock: socket.socket, ifname: str, cmd: int, data: int = 0) -> int:
    """One ethtool_value ioctl (get or set, by ``cmd``) on ``sock``'s namespace."""
    value = ctypes.create_string_buffer(struct.pack("II", cmd, data), 8)
    ifreq = struct.pack(f"{IFNAMSIZ}sP", ifname.encode(), ctypes.addressof(value))
    fcntl.ioctl(sock.fileno(), SIOCETHTOOL, ifreq)
    return int(struct.unpack("II", value.raw)[1])


def send_full_checksums(ifname: str) -> bool:
    """`ethtool -K IFNAME tx off` in this namespace (TSO goes with it): what
    leaves ``ifname`` carries full TCP/UDP checksums.  False when there is no
    such link (a container already took its end).

    Why: the Open vSwitch userspace datapath reads the other end of a veth and
    gets "checksum later" frames from it; OVS 3.1 drops those at a tunnel
    ("Tunneling packets with HW offload flags is not supported"), so TCP and UDP
    between hosts fail while ping works."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            ethtool_value(sock, ifname, ETHTOOL_STXCSUM, 0)
        except OSError as exc:
            if exc.errno == ENODEV:
                return False
            raise LinkError(f"cannot turn tx checksum offload off on {ifname}: {exc}") from exc
    return True


def interface_mac(ifname: str) -> str | None:
    """The MAC of ``ifname`` in this namespace; None when there is no such link."""
    try:
        raw = Path(f"/sys/class/net/{ifname}/address").read_text()
    except OSError:
        return None
    return raw.strip().lower() or None


IPV4_CONF = PROC_SYS_NET / "ipv4"


def route_to_container(ifname: str, addresses: Iterable[str], link_iface: str,
                       conf_dir: Path = IPV4_CONF) -> None:
    """nested-macvlan, routed: the VM forwards between its NIC and a container's
    veth, answering ARP on both sides for the other (proxy ARP), so every frame
    leaves the VM with the VM's own MAC and the container's address, which the
    VM port's allowed address pairs admit.  IPv4 only; idempotent."""
    for path, value in ((conf_dir / "ip_forward", "1"),
                        (conf_dir / "conf" / link_iface / "proxy_arp", "1"),
                        (conf_dir / "conf" / ifname / "proxy_arp", "1")):
        if path.read_text().strip() != value:
            path.write_text(value)
    with IPRoute() as ipr:
        idx = ipr.link_lookup(ifname=ifname)
        if not idx:
            raise LinkError(f"interface {ifname} does not exist")
        for address in addresses:
            if ipaddress.ip_address(address).version == 4:  # noqa: PLR2004
                ipr.route("replace", dst=f"{address}/32", oif=idx[0])

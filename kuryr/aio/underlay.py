"""The underlay between the stack's chassis: the main host and its simulated
hosts reach each other's tunnel endpoints (Geneve) over it.

A Linux bridge in the root namespace (UNDERLAY_BRIDGE: no address, no uplink)
with one veth per machine; the machine's end is a port of that machine's
br-phy, whose own tap has the machine's address in UNDERLAY_CIDR (see
SwitchFiles.plug_underlay).  Every link made here is recorded (kuryr.aio.links),
so `down` deletes exactly those.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable
from pathlib import Path

from pyroute2 import IPRoute

from kuryr.aio import links, namespaces, procs
from kuryr.aio.layout import (
    MAIN_UNDERLAY_INDEX,
    NAMED_NETNS,
    UNDERLAY_BRIDGE,
    UNDERLAY_CIDR,
    UNDERLAY_MTU,
    UNDERLAY_OVS_BRIDGE,
    Layout,
)
from kuryr.binding import netlink

# The main host's veth: its bridge end, and its end on the main br-phy (both in
# the root namespace; a simulated host's name cannot make either: kul-NAME).
MAIN_BRIDGE_END = "kuryr-ul-main"
MAIN_OVS_END = "kuryr-ul-phy"
HOST_END = "ul-phy"  # a simulated host's end, in its own namespace
ROOT_NETNS = "/proc/self/ns/net"  # this process's (kuryr-aio runs in the root one)


def address(index: int) -> str:
    """The index-th address of the underlay, in CIDR form."""
    net = ipaddress.ip_network(UNDERLAY_CIDR)
    if not 0 < index < net.num_addresses - 1:
        raise ValueError(f"no underlay address {index} in {UNDERLAY_CIDR}")
    return f"{net[index]}/{net.prefixlen}"


def main_address() -> str:
    return address(MAIN_UNDERLAY_INDEX)


def allocate(taken: Iterable[str]) -> str:
    """The lowest address of the underlay that is neither the main host's nor
    in ``taken`` (the other hosts', CIDR form or bare)."""
    used = {ipaddress.ip_interface(addr).ip for addr in taken}
    used.add(ipaddress.ip_interface(main_address()).ip)
    net = ipaddress.ip_network(UNDERLAY_CIDR)
    for index in range(MAIN_UNDERLAY_INDEX + 1, net.num_addresses - 1):
        if net[index] not in used:
            return address(index)
    raise procs.StackError(f"the underlay {UNDERLAY_CIDR} has no free address left")


def within(address: str) -> bool:
    return ipaddress.ip_interface(address).ip in ipaddress.ip_network(UNDERLAY_CIDR)


def used_addresses_inside(addresses: Iterable[str]) -> list[str]:
    """Those of ``addresses`` (the machine's gateways, name servers and
    /etc/hosts entries) that fall into the underlay's prefix: routing the
    prefix to the underlay would cut the machine off from them."""
    prefix = ipaddress.ip_network(UNDERLAY_CIDR)
    found = []
    for text in addresses:
        try:
            if ipaddress.ip_address(text) in prefix:
                found.append(text)
        except ValueError:
            continue
    return sorted(set(found))


def _addresses_the_machine_uses() -> list[str]:
    """Default gateways, name servers, every address /etc/hosts names, and the
    peers of its open TCP connections: what it reaches through its default
    route has no route of its own to show it (this machine's package registries
    resolve into TEST-NET-3).  A heuristic: hence also a prefix from a range
    reserved for benchmarking."""
    found = _tcp_peers()
    with IPRoute() as ipr:
        found += [route.get_attr("RTA_GATEWAY") for route in ipr.get_default_routes()
                  if route.get_attr("RTA_GATEWAY")]
    for path, keep in (("/etc/resolv.conf", lambda f: f[0] == "nameserver" and f[1:]),
                       ("/etc/hosts", lambda f: bool(f) and not f[0].startswith("#"))):
        try:
            lines = Path(path).read_text().splitlines()
        except OSError:
            continue
        for fields in (line.split() for line in lines):
            if fields and keep(fields):
                found.append(fields[1] if fields[0] == "nameserver" else fields[0])
    return found


def _tcp_peers() -> list[str]:
    """Remote IPv4 addresses in /proc/net/tcp (little-endian hex)."""
    try:
        lines = Path("/proc/net/tcp").read_text().splitlines()[1:]
    except OSError:
        return []
    peers = []
    for line in lines:
        remote = line.split()[2].split(":")[0]
        peers.append(str(ipaddress.IPv4Address(int.from_bytes(bytes.fromhex(remote),
                                                               "little"))))
    return peers


def overlapping_routes(routes: Iterable[tuple[str, int, str]], own: str) -> list[str]:
    """Routes ((destination, prefix length, device)) of the root namespace into
    the underlay's prefix through another device than ``own``: the machine's
    real networks.  A default route is not one."""
    prefix = ipaddress.ip_network(UNDERLAY_CIDR)
    return [f"{dst}/{length} dev {dev}" for dst, length, dev in routes
            if length and dev != own
            and ipaddress.ip_network(f"{dst}/{length}", strict=False).overlaps(prefix)]


def _root_routes() -> list[tuple[str, int, str]]:
    with IPRoute() as ipr:
        names = {link["index"]: link.get_attr("IFLA_IFNAME") for link in ipr.get_links()}
        # A route with no destination is a default route (length 0, skipped).
        return [(route.get_attr("RTA_DST") or "0.0.0.0", route["dst_len"],  # noqa: S104
                 names.get(route.get_attr("RTA_OIF"), "?"))
                for route in ipr.get_routes(family=socket.AF_INET, table=254)]


def check_prefix_free() -> None:
    """Refuse an underlay prefix the machine reaches through a real interface
    (the stack's tunnels would leave the machine) or that holds an address it
    talks to (its route would take that traffic into the underlay)."""
    found = overlapping_routes(_root_routes(), own=UNDERLAY_OVS_BRIDGE)
    found += used_addresses_inside(_addresses_the_machine_uses())
    if found:
        raise procs.StackError(f"the underlay prefix {UNDERLAY_CIDR} is used on this "
                               f"machine ({'; '.join(found)}): it must be unused")


def ensure_bridge(layout: Layout) -> None:
    with IPRoute() as ipr:
        if not ipr.link_lookup(ifname=UNDERLAY_BRIDGE):
            ipr.link("add", ifname=UNDERLAY_BRIDGE, kind="bridge", mtu=UNDERLAY_MTU)
            links.record(layout, [UNDERLAY_BRIDGE])
            netlink.deafen_to_ipv6(UNDERLAY_BRIDGE)
        ipr.link("set", index=ipr.link_lookup(ifname=UNDERLAY_BRIDGE)[0], state="up")


def plug(layout: Layout, bridge_end: str, machine_end: str, netns: str | None = None) -> None:
    """A veth from the underlay bridge (``bridge_end``) to a machine
    (``machine_end``, in the named namespace ``netns`` or the root one, to
    become a port of its br-phy); idempotent.  Neither end sends "checksum
    later" frames: OVS 3.1's userspace datapath drops tunnelled packets
    carrying offload flags."""
    netns_path = ROOT_NETNS if netns is None else str(NAMED_NETNS / netns)
    if not netlink.link_exists(bridge_end):
        peer: dict[str, object] = {"ifname": machine_end, "mtu": UNDERLAY_MTU}
        if netns is not None:
            peer["net_ns_fd"] = netns
        with IPRoute() as ipr:
            ipr.link("add", ifname=bridge_end, kind="veth", mtu=UNDERLAY_MTU, peer=peer)
        links.record(layout, [bridge_end])  # deleting it deletes its peer
        netlink.deafen_to_ipv6(bridge_end)
    netlink.attach_to_linux_bridge(bridge_end, UNDERLAY_BRIDGE)
    namespaces.disable_tx_checksum(ROOT_NETNS, bridge_end)
    # The machine's kernel ignores its end: only its br-phy reads it.
    namespaces.write_sysctls(netns_path, namespaces.bridge_port_sysctls(machine_end))
    with netlink.in_netns(netns_path) as ns:
        ns.link("set", index=ns.link_lookup(ifname=machine_end)[0], state="up")
    namespaces.disable_tx_checksum(netns_path, machine_end)


def present(bridge_end: str) -> bool:
    """The bridge and a machine's veth on it exist (its peer goes with it)."""
    return netlink.link_exists(UNDERLAY_BRIDGE) and netlink.link_exists(bridge_end)


def plug_main(layout: Layout) -> None:
    """The main host's veth on the underlay (its address is on its br-phy).
    The prefix is checked every time: /etc/hosts may have changed since."""
    check_prefix_free()
    ensure_bridge(layout)
    plug(layout, MAIN_BRIDGE_END, MAIN_OVS_END)


def main_present() -> bool:
    """The main host is on the underlay: its veth, and its address on br-phy."""
    if not present(MAIN_BRIDGE_END):
        return False
    ip = main_address().split("/")[0]
    with IPRoute() as ipr:
        idx = ipr.link_lookup(ifname=UNDERLAY_OVS_BRIDGE)
        return bool(idx and ipr.get_addr(index=idx[0], address=ip))


def unplug_main(layout: Layout) -> list[str]:
    """At `down`: the main host's veth and the bridge (simulated hosts are
    powered off first: their veths are gone)."""
    return links.delete_created(layout, [MAIN_BRIDGE_END, UNDERLAY_BRIDGE])

"""The veth Binder on the real stack: a Neutron port bound to this host is plugged by
its VIF type, and OVN's ovn-installed mark is seen through an OVSDB row event."""

from __future__ import annotations

import socket
import struct
import subprocess
import threading
import time
import uuid
from pathlib import Path

from pyroute2 import netns
from pyroute2.netns import create_socket

from kuryr.binding import netlink
from kuryr.binding.plugging import build_binder
from kuryr.binding.vif import VIF


def test_binder_plugs_a_bound_port_and_sees_it_wired(neutron, ovs, stack, tenant_net,
                                                     cleanup, unique):
    net, _ = tenant_net
    port = neutron.api.create_port(network_id=net.id, binding_host_id=stack.host,
                                   device_owner="compute:kuryr-test")
    cleanup(lambda: neutron.api.delete_port(port.id, ignore_missing=True))
    assert port.binding_vif_type == "ovs"
    binder = build_binder("veth", ovs, stack.host)
    vif = VIF(port_id=port.id, mac=port.mac_address, vif_type=port.binding_vif_type,
              bridge=port.binding_vif_details["bridge_name"], mtu=net.mtu)
    endpoint_id = f"ep-{unique}"
    cleanup(lambda: binder.unplug(vif))

    binder.plug(vif, endpoint_id=endpoint_id)
    started = time.monotonic()
    # At once after plug: ovn-controller has yet to claim the port, so the answer
    # comes from the row event, not from the first read.
    assert binder.wait_wired(vif, timeout=15) is True
    print(f"ovn-installed {time.monotonic() - started:.3f} s after plug")

    binder.plug(vif, endpoint_id=endpoint_id)  # idempotent
    assert binder.is_plugged(vif)
    assert binder.is_free(vif)
    assert binder.endpoint_of(vif) == endpoint_id
    assert binder.port_of_endpoint(endpoint_id) == port.id
    started = time.monotonic()
    assert binder.wait_wired(vif, timeout=15) is True  # already installed: at once
    assert time.monotonic() - started < 0.5, f"second wait took {time.monotonic() - started}"

    binder.forget_endpoint(vif)
    assert binder.endpoint_of(vif) is None
    binder.unplug(vif)
    assert not binder.is_plugged(vif)
    assert vif.host_ifname not in ovs.managed_interfaces()


def test_wait_wired_is_false_at_the_timeout_for_a_port_ovn_never_binds(ovs, stack, cleanup):
    # A port id Neutron never made: OVN has no logical port for it, so
    # ovn-controller never marks the interface installed.
    binder = build_binder("veth", ovs, stack.host)
    vif = VIF(port_id=str(uuid.uuid4()), mac="fa:16:3e:12:34:56", vif_type="ovs")
    cleanup(lambda: binder.unplug(vif))
    binder.plug(vif)
    started = time.monotonic()
    assert binder.wait_wired(vif, timeout=1.0) is False
    elapsed = time.monotonic() - started
    assert 1.0 <= elapsed < 2.0, f"took {elapsed:.2f} s"


def test_wait_wired_wakes_on_the_ovsdb_change_itself(ovs, stack, cleanup):
    # Deterministic: the mark is set by hand 0.3 s into the wait (OVN never binds
    # this port id), so only the row event can end the wait early.
    binder = build_binder("veth", ovs, stack.host)
    vif = VIF(port_id=str(uuid.uuid4()), mac="fa:16:3e:12:34:57", vif_type="ovs")
    cleanup(lambda: binder.unplug(vif))
    binder.plug(vif)
    timer = threading.Timer(0.3, lambda: subprocess.run(
        ["ovs-vsctl", "set", "Interface", vif.host_ifname,
         "external_ids:ovn-installed=true"], check=True))
    timer.start()
    cleanup(timer.cancel)
    started = time.monotonic()
    assert binder.wait_wired(vif, timeout=10) is True
    elapsed = time.monotonic() - started
    assert 0.25 <= elapsed < 1.5, f"took {elapsed:.2f} s"


def router_advertisement() -> bytes:
    """ICMPv6 RA (type 134; the kernel fills the checksum) announcing a default
    route and the SLAAC prefix 2001:db8:bad::/64."""
    header = struct.pack("!BBHBBHII", 134, 0, 0, 64, 0, 1800, 0, 0)
    prefix = struct.pack("!BBBBIII16s", 3, 4, 64, 0xC0, 3600, 1800, 0,
                         socket.inet_pton(socket.AF_INET6, "2001:db8:bad::"))
    return header + prefix


def test_host_end_of_a_veth_ignores_a_containers_router_advertisements(cleanup, unique):
    vif = VIF(port_id=str(uuid.uuid4()), mac="fa:16:3e:00:00:0b")
    assert netlink.create_veth(vif)
    cleanup(lambda: netlink.delete_link(vif.host_ifname))
    conf = Path("/proc/sys/net/ipv6/conf") / vif.host_ifname
    assert (conf / "disable_ipv6").read_text().strip() == "1"
    assert (conf / "accept_ra").read_text().strip() == "0"
    ns = f"ra-{unique}"
    netns.create(ns)
    cleanup(lambda: netns.remove(ns))
    inside = vif.container_ifname
    for cmd in (["ip", "link", "set", inside, "netns", ns],
                ["ip", "-n", ns, "link", "set", inside, "up"],
                ["ip", "-n", ns, "addr", "add", "fe80::bad/64", "dev", inside, "nodad"]):
        subprocess.run(cmd, check=True)
    sender = create_socket(ns, socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
    try:
        index = int(subprocess.run(["ip", "netns", "exec", ns, "cat",
                                    f"/sys/class/net/{inside}/ifindex"],
                                   capture_output=True, text=True, check=True).stdout)
        sender.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, 255)
        sender.bind(("fe80::bad", 0, 0, index))
        for _ in range(3):
            sender.sendto(router_advertisement(), ("ff02::1", 0, 0, index))
            time.sleep(0.3)
    finally:
        sender.close()
    routes = subprocess.run(["ip", "-6", "route", "show", "dev", vif.host_ifname],
                            capture_output=True, text=True, check=False).stdout
    addresses = subprocess.run(["ip", "-6", "addr", "show", "dev", vif.host_ifname],
                               capture_output=True, text=True, check=True).stdout
    assert "2001:db8:bad" not in addresses, addresses
    assert "inet6" not in addresses, addresses
    assert routes.strip() == "", routes


def test_a_veth_end_goes_into_a_namespace_and_back_from_many_threads(cleanup, unique):
    """What a pod's ADD and DEL do with its interface, from the CNI daemon's
    worker threads at once; each thread's own namespace is the host's after."""
    from concurrent.futures import ThreadPoolExecutor

    def round_trip(i: int) -> tuple[str, str]:
        vif = VIF(port_id=str(uuid.uuid4()), mac=f"fa:16:3e:00:01:{i:02x}")
        netlink.create_veth(vif)
        cleanup(lambda: netlink.delete_link(vif.host_ifname))
        ns = f"nt{i}-{unique}"
        netns.create(ns)
        cleanup(lambda: netns.remove(ns))
        # A path (CNI) or a name under /var/run/netns (`ip netns`, the tests' helpers).
        path = f"/var/run/netns/{ns}" if i % 2 else ns
        netlink.move_into_netns(vif.container_ifname, path, "eth0", [f"10.99.{i}.5/24"],
                                [f"10.99.{i}.1"])
        found = netlink.interface_in_netns(path, "eth0")
        assert found is not None
        assert found[0] == vif.mac
        assert f"10.99.{i}.5/24" in found[1]  # beside its IPv6 link-local address
        assert netlink.move_out_of_netns(path, "eth0", vif.container_ifname)
        assert netlink.interface_in_netns(path, "eth0") is None
        assert netlink.link_exists(vif.container_ifname)  # back in the host's namespace
        return Path("/proc/thread-self/ns/net").readlink(), Path("/proc/self/ns/net").readlink()

    with ThreadPoolExecutor(4) as pool:
        for thread_ns, process_ns in pool.map(round_trip, range(8)):
            assert thread_ns == process_ns


def test_a_missing_namespace_is_an_error_and_the_thread_stays_home(tmp_path):
    import pytest

    with pytest.raises(FileNotFoundError):
        netlink.interface_in_netns(str(tmp_path / "gone"), "eth0")
    with pytest.raises(OSError, match="setns"):  # a file, not a namespace
        netlink.interface_in_netns(str(Path(__file__)), "eth0")
    assert Path("/proc/thread-self/ns/net").readlink() == Path("/proc/self/ns/net").readlink()

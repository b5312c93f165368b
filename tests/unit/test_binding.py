"""kuryr/binding: the Binder registry, dispatch by VIF type, rollback, best-effort unplug
and the OVSDB row event behind wait_installed.  Host operations are faked at the
Binder's collaborators (Links, Switch): pure logic, no netlink, no OVSDB."""

from __future__ import annotations

import logging
import threading
import time
from types import SimpleNamespace

import pytest
from ovsdbapp import event as ovsdb_event

from kuryr import config, errors
from kuryr.binding import UnsupportedDriver, netlink
from kuryr.binding.ovs import ENDPOINT_KEY, OVS, OVSError, _InterfaceInstalled, chassis_mismatch
from kuryr.binding.plugging import DRIVERS, ChildDeviceBinder, Nested, VethBinder, build_binder
from kuryr.binding.vif import VIF

HOST = "node-7"
PORT = "0123456789abcdef-port"


def vif(vif_type="ovs", **kw):
    return VIF(port_id=PORT, mac="fa:16:3e:00:00:01", vif_type=vif_type, **kw)


class FakeLinks:
    """The host's links as a set of names; failures injected per operation."""

    def __init__(self, existing=(), fail=()):
        self.links = set(existing)
        self.fail = set(fail)
        self.calls = []

    def _op(self, name, *args):
        self.calls.append((name, *args))
        if name in self.fail:
            raise netlink.LinkError(f"{name} failed")

    def create_veth(self, vif):
        self._op("create_veth", vif.host_ifname)
        if vif.host_ifname in self.links:
            return False
        self.links |= {vif.host_ifname, vif.container_ifname}
        return True

    def delete_link(self, ifname):
        self._op("delete_link", ifname)
        found = ifname in self.links
        self.links -= {ifname, "tc" + ifname[3:]}
        return found

    def link_exists(self, ifname):
        self._op("link_exists", ifname)
        return ifname in self.links

    def attach_to_linux_bridge(self, ifname, bridge):
        self._op("attach_to_linux_bridge", ifname, bridge)

    def send_full_checksums(self, ifname):
        self._op("send_full_checksums", ifname)
        return ifname in self.links


class FakeSwitch:
    """Open vSwitch as a dict of interface -> external_ids."""

    def __init__(self, fail=(), installed=True, datapath="netdev"):
        self.ports = {}
        self.fail = set(fail)
        self.installed = installed
        self.datapath = datapath
        self.calls = []

    def _op(self, name, *args):
        self.calls.append((name, *args))
        if name in self.fail:
            raise RuntimeError(f"ovsdb: {name} failed")

    def plug(self, vif, ifname=None, endpoint_id="", record=None, tag=None):
        self._op("plug", vif.host_ifname, vif.bridge, endpoint_id)
        self.tags = {**getattr(self, "tags", {}), vif.host_ifname: tag}
        ids = {"iface-id": vif.port_id}
        if endpoint_id:
            ids[ENDPOINT_KEY] = endpoint_id
        self.ports[vif.host_ifname] = ids

    def unplug(self, ifname, bridge=None):
        self._op("unplug", ifname)
        self.ports.pop(ifname, None)

    def forget_endpoint(self, ifname):
        self._op("forget_endpoint", ifname)
        self.ports.get(ifname, {}).pop(ENDPOINT_KEY, None)

    def interface_external_ids(self, ifname):
        self._op("interface_external_ids", ifname)
        return dict(self.ports.get(ifname, {}))

    def port_of_endpoint(self, endpoint_id):
        self._op("port_of_endpoint", endpoint_id)
        return next((ids["iface-id"] for ids in self.ports.values()
                     if ids.get(ENDPOINT_KEY) == endpoint_id), None)

    def wait_installed(self, ifname, timeout):
        self._op("wait_installed", ifname, timeout)
        return self.installed

    def datapath_type(self, bridge):
        # Kept apart from calls: the plug tests compare those.
        self.datapath_asked = [*getattr(self, "datapath_asked", []), bridge]
        if "datapath_type" in self.fail:
            raise RuntimeError("ovsdb: datapath_type failed")
        return self.datapath


@pytest.fixture
def links():
    return FakeLinks()


@pytest.fixture
def switch():
    return FakeSwitch()


@pytest.fixture
def binder(links, switch):
    return VethBinder(HOST, switch, links)


def names(calls):
    return [c[0] for c in calls]


# -- the registry ------------------------------------------------------------------------------

def test_registry_covers_every_configurable_port_driver():
    opt = next(o for o in config.core_opts if o.dest == "port_driver")
    assert set(DRIVERS) == set(opt.type.choices)


def test_veth_driver_builds_a_veth_binder():
    binder = build_binder("veth", OVS("unix:/nonexistent.sock"), HOST)  # OVS connects lazily
    assert isinstance(binder, VethBinder)
    assert binder.host == HOST


@pytest.mark.parametrize("driver", ["nested-vlan", "nested-macvlan"])
def test_nested_drivers_without_the_vms_interface_refuse_to_start(driver):
    with pytest.raises(UnsupportedDriver) as caught:
        build_binder(driver, OVS("unix:/nonexistent.sock"), HOST,
                     Nested("", "kernel", lambda port_id: None))
    assert f"port_driver = {driver} needs [binding] link_iface" in str(caught.value)


def test_nested_drivers_build_the_binder_of_their_tagging():
    def vlans(port_id):
        return 7
    ovs = OVS("unix:/nonexistent.sock")
    assert isinstance(build_binder("nested-vlan", ovs, HOST, Nested("eth0", "ovs", vlans)),
                      VethBinder)
    kernel = build_binder("nested-vlan", ovs, HOST, Nested("eth0", "kernel", vlans))
    assert isinstance(kernel, ChildDeviceBinder)
    assert kernel.kind == "vlan"
    pairs = build_binder("nested-macvlan", ovs, HOST, Nested("eth0", "kernel", vlans))
    assert isinstance(pairs, ChildDeviceBinder)
    assert pairs.kind == "ipvlan"


def test_nested_vlan_over_ovs_plugs_an_access_port_of_the_subports_vlan(links, switch):
    binder = VethBinder(HOST, switch, links, vlans={PORT: 42}.get)
    v = vif("", bridge="br-vm")  # a VM's credentials cannot read the binding
    binder.plug(v, endpoint_id="ep1")
    assert switch.tags == {v.host_ifname: 42}
    # Wired once plugged: Neutron 29 reports sub-ports' status unreliably (SUBPORT_WIRED).
    assert binder.wait_wired(v, 1) is True
    binder.plug(vif("binding_failed", bridge="br-vm"))  # the hypervisor's to judge


def test_nested_vlan_over_ovs_refuses_a_port_with_no_vlan_and_makes_nothing(links, switch):
    binder = VethBinder(HOST, switch, links, vlans={}.get)
    with pytest.raises(errors.BackendUnavailable, match="no sub-port of this VM's trunk"):
        binder.plug(vif("ovs", bridge="br-vm"))
    assert links.links == set()  # the veth made for it is gone again


def test_child_device_requests_at_the_netlink_message_level():
    vlan = netlink.child_link_request("tc0123", 5, "vlan", vlan_id=100,
                                      mac="fa:16:3e:00:00:01", mtu=1442)
    assert vlan == {"ifname": "tc0123", "kind": "vlan", "link": 5, "vlan_id": 100,
                    "address": "fa:16:3e:00:00:01", "mtu": 1442}
    ipvlan = netlink.child_link_request("tc0123", 5, "ipvlan", mac="fa:16:3e:00:00:01")
    # L2 mode; no MAC of its own: an ipvlan shares the VM NIC's, the only one the
    # VM port's allowed address pairs may carry.
    assert ipvlan == {"ifname": "tc0123", "kind": "ipvlan", "link": 5, "ipvlan_mode": 0}


@pytest.mark.parametrize("bad", [None, 0, 4095])
def test_child_device_refuses_a_vlan_id_out_of_range(bad):
    with pytest.raises(netlink.LinkError, match="is not 1-4094"):
        netlink.child_link_request("tc0123", 5, "vlan", vlan_id=bad)


def test_unknown_driver_names_the_choices():
    with pytest.raises(UnsupportedDriver, match="veth, nested-vlan, nested-macvlan"):
        build_binder("sriov", OVS("unix:/nonexistent.sock"), HOST)


# -- plug: dispatch by vif_type ---------------------------------------------------------------

@pytest.mark.parametrize("vif_type", ["ovs", "unbound"])
def test_ovs_types_plug_the_veth_into_the_ovs_bridge(binder, links, switch, vif_type):
    v = vif(vif_type, bridge="br-x")
    binder.plug(v, endpoint_id="ep1")
    assert v.host_ifname in links.links
    assert switch.calls == [("plug", v.host_ifname, "br-x", "ep1")]
    assert "attach_to_linux_bridge" not in names(links.calls)


def test_bridge_type_enslaves_the_veth_to_the_linux_bridge(binder, links, switch):
    v = vif("bridge", bridge="brq123")
    binder.plug(v, endpoint_id="ep1")
    assert ("attach_to_linux_bridge", v.host_ifname, "brq123") in links.calls
    assert switch.calls == []


def test_binding_failed_names_port_and_host_and_makes_nothing(binder, links, switch):
    with pytest.raises(errors.BackendUnavailable) as caught:
        binder.plug(vif("binding_failed"))
    assert PORT in str(caught.value)
    assert f"to host {HOST}" in str(caught.value)
    assert links.calls == []
    assert switch.calls == []


@pytest.mark.parametrize("vif_type", ["vhostuser", "hw_veb", ""])
def test_other_types_are_invalid_input_naming_the_type(binder, links, switch, vif_type):
    with pytest.raises(errors.InvalidInput, match=f"vif_type {vif_type!r}"):
        binder.plug(vif(vif_type))
    assert links.calls == []
    assert switch.calls == []


def test_replug_is_idempotent(binder, links, switch):
    v = vif()
    binder.plug(v, "ep1")
    binder.plug(v, "ep1")
    assert v.host_ifname in links.links
    assert names(switch.calls) == ["plug", "plug"]
    assert "delete_link" not in names(links.calls)


# -- plug: checksums on the userspace datapath ------------------------------------------------

def test_userspace_datapath_gets_full_checksums_from_the_container_end(binder, links, switch):
    v, w = vif(bridge="br-int"), VIF(port_id="other-port", mac="fa:16:3e:00:00:02",
                                      vif_type="ovs", bridge="br-int")
    binder.plug(v)
    binder.plug(w)
    assert ("send_full_checksums", v.container_ifname) in links.calls
    assert ("send_full_checksums", w.container_ifname) in links.calls
    assert switch.datapath_asked == ["br-int"]  # once per bridge


def test_kernel_datapath_and_linux_bridges_keep_checksum_offload(links):
    switch = FakeSwitch(datapath="system")
    binder = VethBinder(HOST, switch, links)
    binder.plug(vif(bridge="br-int"))
    binder.plug(VIF(port_id="lb-port", mac="fa:16:3e:00:00:03", vif_type="bridge",
                    bridge="brq1"))
    assert "send_full_checksums" not in names(links.calls)


def test_checksum_failure_removes_the_veth_it_made(switch):
    links = FakeLinks(fail={"send_full_checksums"})
    binder = VethBinder(HOST, switch, links)
    with pytest.raises(errors.KuryrError, match="send_full_checksums failed"):
        binder.plug(vif())
    assert links.links == set()
    assert "plug" not in names(switch.calls)


def test_unreadable_datapath_is_backend_unavailable_and_leaves_nothing(links):
    binder = VethBinder(HOST, FakeSwitch(fail={"datapath_type"}), links)
    with pytest.raises(errors.BackendUnavailable, match="datapath of bridge"):
        binder.plug(vif(bridge="br-int"))
    assert links.links == set()


def test_send_full_checksums_of_a_missing_link_is_false():
    assert netlink.send_full_checksums("kuryr-nosuch0") is False


# -- plug: rollback ---------------------------------------------------------------------------

def test_ovs_failure_removes_the_veth_it_made_and_is_backend_unavailable(links):
    switch = FakeSwitch(fail={"plug"})
    binder = VethBinder(HOST, switch, links)
    v = vif()
    with pytest.raises(errors.BackendUnavailable, match="Open vSwitch: cannot plug"):
        binder.plug(v)
    assert links.links == set()  # no orphaned veth
    assert ("unplug", v.host_ifname) in switch.calls


def test_ovs_failure_keeps_a_veth_this_call_did_not_make():
    v = vif()
    links = FakeLinks(existing={v.host_ifname, v.container_ifname})
    binder = VethBinder(HOST, FakeSwitch(fail={"plug"}), links)
    with pytest.raises(errors.BackendUnavailable):
        binder.plug(v)
    assert v.host_ifname in links.links
    assert "delete_link" not in names(links.calls)


def test_linux_bridge_failure_removes_the_veth(switch):
    links = FakeLinks(fail={"attach_to_linux_bridge"})
    binder = VethBinder(HOST, switch, links)
    with pytest.raises(errors.KuryrError, match="attach_to_linux_bridge failed"):
        binder.plug(vif("bridge", bridge="brq1"))
    assert links.links == set()
    assert switch.calls == []  # a Linux bridge port was never in OVS


def test_veth_failure_is_a_kuryr_error_and_attaches_nothing(switch):
    links = FakeLinks(fail={"create_veth"})
    binder = VethBinder(HOST, switch, links)
    with pytest.raises(errors.KuryrError, match="create_veth failed"):
        binder.plug(vif())
    assert switch.calls == []


def test_rollback_failure_does_not_hide_the_plug_error(caplog):
    links = FakeLinks(fail={"delete_link"})
    binder = VethBinder(HOST, FakeSwitch(fail={"plug", "unplug"}), links)
    with caplog.at_level(logging.WARNING), pytest.raises(errors.BackendUnavailable):
        binder.plug(vif())
    assert "could not delete" in caplog.text


# -- unplug: best effort ----------------------------------------------------------------------

def test_unplug_removes_ovs_port_and_veth(binder, links, switch):
    v = vif()
    binder.plug(v)
    binder.unplug(v)
    assert links.links == set()
    assert switch.ports == {}


@pytest.mark.parametrize("vif_type", ["ovs", "unbound", "binding_failed", "vhostuser"])
def test_unplug_tries_ovs_for_every_type_but_linux_bridge(binder, switch, vif_type):
    binder.unplug(vif(vif_type))
    assert names(switch.calls) == ["unplug"]


def test_unplug_of_linux_bridge_port_leaves_ovs_alone(binder, links, switch):
    v = vif("bridge")
    binder.unplug(v)
    assert switch.calls == []
    assert ("delete_link", v.host_ifname) in links.calls


def test_unplug_never_raises_and_still_deletes_the_veth(caplog):
    v = vif()
    links = FakeLinks(existing={v.host_ifname}, fail={"delete_link"})
    switch = FakeSwitch(fail={"unplug"})
    binder = VethBinder(HOST, switch, links)
    with caplog.at_level(logging.WARNING):
        binder.unplug(v)  # no exception
    assert ("delete_link", v.host_ifname) in links.calls  # tried after OVS failed
    assert "could not detach" in caplog.text
    assert "could not delete" in caplog.text


def test_unplug_of_nothing_is_quiet(binder, caplog):
    with caplog.at_level(logging.WARNING):
        binder.unplug(vif())
    assert caplog.text == ""


# -- waiting and local state ------------------------------------------------------------------

def test_wait_wired_asks_ovs_for_ovs_types(binder, switch):
    assert binder.wait_wired(vif(), 3.0) is True
    assert switch.calls == [("wait_installed", vif().host_ifname, 3.0)]
    switch.installed = False
    assert binder.wait_wired(vif("unbound"), 0.1) is False


@pytest.mark.parametrize("vif_type", ["bridge", "binding_failed", "vhostuser"])
def test_wait_wired_is_none_where_wiring_cannot_be_seen_locally(binder, switch, vif_type):
    assert binder.wait_wired(vif(vif_type), 3.0) is None
    assert switch.calls == []


def test_ovs_failures_while_waiting_or_reading_are_backend_unavailable(links):
    switch = FakeSwitch(fail={"wait_installed", "forget_endpoint", "interface_external_ids",
                              "port_of_endpoint"})
    binder = VethBinder(HOST, switch, links)
    for call in (lambda: binder.wait_wired(vif(), 1), lambda: binder.forget_endpoint(vif()),
                 lambda: binder.endpoint_of(vif()), lambda: binder.port_of_endpoint("ep")):
        with pytest.raises(errors.BackendUnavailable):
            call()


def test_endpoint_recorded_then_forgotten(binder):
    v = vif()
    binder.plug(v, endpoint_id="ep1")
    assert binder.endpoint_of(v) == "ep1"
    assert binder.port_of_endpoint("ep1") == PORT
    binder.forget_endpoint(v)
    assert binder.endpoint_of(v) is None
    assert binder.port_of_endpoint("ep1") is None


def test_linux_bridge_ports_record_no_endpoint(binder, switch):
    v = vif("bridge")
    binder.plug(v, endpoint_id="ep1")
    binder.forget_endpoint(v)
    assert binder.endpoint_of(v) is None
    assert switch.calls == []


def test_plugged_and_free(binder, links):
    v = vif()
    assert not binder.is_plugged(v)
    assert not binder.is_free(v)
    binder.plug(v)
    assert binder.is_plugged(v)
    assert binder.is_free(v)
    links.links.discard(v.container_ifname)  # a container took its end
    assert binder.is_plugged(v)
    assert not binder.is_free(v)


# -- the OVSDB row event behind OVS.wait_installed ----------------------------------------------

def interface_row(name, installed=False, external_ids=None):
    if external_ids is None:
        external_ids = {"ovn-installed": "true"} if installed else {}
    return SimpleNamespace(name=name, external_ids=external_ids,
                           _table=SimpleNamespace(name="Interface", columns={}))


class FakeApi:
    """The IDL replica of one Interface, as OVS.wait_installed reads it."""

    def __init__(self, row):
        self.row = row
        self.ovsdb_connection = SimpleNamespace(lock=threading.RLock())

    def lookup(self, table, name, default=None):
        return self.row if self.row and self.row.name == name else default


@pytest.fixture
def handler():
    handler = ovsdb_event.RowEventHandler()
    yield handler
    handler.shutdown()


def ovs_with(handler, row, on_lookup=None):
    ovs = OVS("unix:/nonexistent.sock")
    api = FakeApi(row)
    if on_lookup is not None:
        original = api.lookup

        def lookup(*args, **kwargs):
            on_lookup()
            return original(*args, **kwargs)
        api.lookup = lookup
    ovs._connected = lambda: (api, handler)
    return ovs


def watched(handler):
    return list(handler._watched_events)


def test_wait_installed_returns_at_once_when_already_installed(handler):
    ovs = ovs_with(handler, interface_row("tap1", installed=True))
    started = time.monotonic()
    assert ovs.wait_installed("tap1", 5) is True
    assert time.monotonic() - started < 1
    assert watched(handler) == []  # unregistered


def test_wait_installed_times_out_and_unregisters(handler):
    ovs = ovs_with(handler, interface_row("tap1", installed=False))
    started = time.monotonic()
    assert ovs.wait_installed("tap1", 0.2) is False
    assert 0.2 <= time.monotonic() - started < 2
    assert watched(handler) == []


def test_wait_installed_wakes_on_the_row_event(handler):
    ovs = ovs_with(handler, interface_row("tap1", installed=False))
    threading.Timer(0.1, lambda: handler.notify(
        "update", interface_row("tap1", installed=True))).start()
    started = time.monotonic()
    assert ovs.wait_installed("tap1", 5) is True
    assert time.monotonic() - started < 2


def test_wait_installed_does_not_miss_a_change_during_the_first_read(handler):
    # The change arrives after the event is registered but before the read returns
    # what it saw (not installed): the event, registered first, still catches it.
    ovs = ovs_with(handler, interface_row("tap1", installed=False),
                   on_lookup=lambda: handler.notify("update", interface_row("tap1", True)))
    assert ovs.wait_installed("tap1", 2) is True


def test_other_interfaces_and_other_keys_do_not_wake_the_wait(handler):
    ovs = ovs_with(handler, interface_row("tap1", installed=False))

    def noise():
        handler.notify("update", interface_row("tap2", installed=True))
        handler.notify("update", interface_row("tap1", external_ids={"iface-id": "x"}))
    threading.Timer(0.05, noise).start()
    assert ovs.wait_installed("tap1", 0.4) is False


def test_concurrent_waits_on_one_interface_are_separate_events(handler):
    # ovsdbapp's events compare equal by (table, events, conditions) and the handler
    # keeps a set: without identity equality the second wait would not be watched.
    first, second = _InterfaceInstalled("tap1", 5), _InterfaceInstalled("tap1", 5)
    assert first != second
    handler.watch_event(first)
    handler.watch_event(second)
    assert len(watched(handler)) == 2
    handler.notify("update", interface_row("tap1", installed=True))
    assert first.wait()
    assert second.wait()
    handler.notifications.join()  # each run, then unregistered (one-time events)
    assert watched(handler) == []


def test_many_concurrent_waits_all_wake(handler):
    ovs = ovs_with(handler, interface_row("tap1", installed=False))
    results = []
    threads = [threading.Thread(target=lambda: results.append(ovs.wait_installed("tap1", 5)))
               for _ in range(20)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 5
    while len(watched(handler)) < 20 and time.monotonic() < deadline:
        time.sleep(0.01)
    handler.notify("update", interface_row("tap1", installed=True))
    for t in threads:
        t.join(5)
    assert results == [True] * 20
    assert watched(handler) == []


def test_unreachable_ovsdb_is_an_ovs_error():
    with pytest.raises(OVSError, match="cannot reach OVSDB"):
        OVS("unix:/nonexistent.sock", timeout=1).bridge_exists("br-int")


# -- [DEFAULT] host against the OVN chassis -----------------------------------------------------

OVN_IDS = {"ovn-remote": "unix:/run/ovn/ovnsb_db.sock", "system-id": "c0ffee"}


def test_host_matching_the_chassis_hostname_is_fine():
    assert chassis_mismatch("node-7", {**OVN_IDS, "hostname": "node-7"}, "other") is None


def test_chassis_without_hostname_is_known_by_the_systems_name():
    assert chassis_mismatch("node-7", OVN_IDS, "node-7") is None
    problem = chassis_mismatch("node-7", OVN_IDS, "node-8")
    assert "[DEFAULT] host is 'node-7'" in problem
    assert "'node-8'" in problem


def test_host_differing_from_the_chassis_hostname_names_both_and_the_fix():
    problem = chassis_mismatch("node-7", {**OVN_IDS, "hostname": "node-7.example"}, "node-7")
    assert "'c0ffee'" in problem
    assert "Set [DEFAULT] host = node-7.example" in problem


def test_open_vswitch_that_is_no_ovn_chassis_is_not_judged():
    assert chassis_mismatch("node-7", {"hostname": "x"}, "y") is None

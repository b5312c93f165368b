"""Simulated hosts (`kuryr-aio host`): names and hostnames, paths, each
process's argv, the host's kuryr.conf and chassis, underlay addresses, the
env exports, and how status and `down` treat hosts."""

import shlex
import sys
from pathlib import Path

import pytest

from kuryr import config
from kuryr.aio import cli, host, switch, underlay, vm, vm_exec, vm_relay
from kuryr.aio.layout import HostLayout, Layout, check_host_name, check_hostname
from kuryr.aio.procs import StackError
from tests.unit.ini import parse_ini

LONG = "kuryr-aio-test-compute-node-in-one-rack-with-a-long-name-and-more-"


@pytest.fixture
def layout(tmp_path):
    return Layout(base=tmp_path / "state", run=tmp_path / "run", host="main")


@pytest.fixture
def h1(layout):
    return layout.sim_host("h1")


def make(layout, name, hostname, address):
    """A host as `host up` leaves its files."""
    made = layout.sim_host(name)
    made.state.mkdir(parents=True)
    made.hostname_file.write_text(f"{hostname}\n")
    made.underlay_file.write_text(f"{address}\n")
    made.up_file.touch()
    return host.SimulatedHost(layout, name)


# -- names, hostnames and paths ----------------------------------------------

@pytest.mark.parametrize("name", ["h1", "a", "0", "host-1", "abcdefghij"])
def test_host_names_fit_an_interface_name(name):
    assert check_host_name(name) == name
    assert len(HostLayout(Layout(Path("/s"), Path("/r"), "h"), name).underlay_ifname) <= 15


@pytest.mark.parametrize("name", ["", "-a", "A", "a_b", "a.b", "abcdefghijk", "a b"])
def test_host_names_refused(name):
    with pytest.raises(ValueError, match="bad host name"):
        check_host_name(name)
    with pytest.raises(SystemExit):
        cli.parser().parse_args(["host", "up", name])


@pytest.mark.parametrize("hostname", ["h", "node-1", "compute.example.org", LONG + "a",
                                      "x" * 253, "1.2.3"])
def test_hostnames_may_be_long_fqdns(hostname):
    assert check_hostname(hostname) == hostname
    args = cli.parser().parse_args(["host", "up", "h1", "--hostname", hostname])
    assert (args.host_command, args.name, args.hostname) == ("up", "h1", hostname)


@pytest.mark.parametrize("hostname", ["", "-a", "a-", "a.", "a_b", "a b", 'a"b', "x" * 254,
                                      "é"])
def test_hostnames_refused(hostname):
    with pytest.raises(ValueError, match="bad hostname"):
        check_hostname(hostname)
    with pytest.raises(SystemExit):
        cli.parser().parse_args(["host", "up", "h1", "--hostname", hostname])


def test_cli_host_commands():
    assert cli.parser().parse_args(["host", "up", "h1"]).hostname is None
    args = cli.parser().parse_args(["host", "down", "h1", "--purge"])
    assert (args.host_command, args.name, args.purge) == ("down", "h1", True)
    assert cli.parser().parse_args(["host", "env", "h1"]).host_command == "env"


def test_host_paths_are_its_own_and_not_a_vms(layout, h1):
    assert h1.state == layout.base / "hosts" / "h1"
    assert h1.run == layout.run / "hosts" / "h1"
    assert h1.netns == "kuryr-host-h1"
    assert h1.netns_path == Path("/run/netns/kuryr-host-h1")
    assert h1.underlay_ifname == "kul-h1"
    assert h1.log("kuryr") == layout.logs / "host-h1-kuryr.log"
    assert h1.label == "host h1"
    same_name_vm = layout.vm("h1")
    assert {h1.state, h1.run, h1.netns, h1.log("kuryr")}.isdisjoint(
        {same_name_vm.state, same_name_vm.run, same_name_vm.netns, same_name_vm.log("kuryr")})
    assert h1.ovs_run == h1.private_mounts()[Path("/run/openvswitch")]


# -- argv of each process ------------------------------------------------------

def test_launcher_and_init_name_the_host_namespace(h1):
    assert vm.launcher(h1) == [sys.executable, "-m", "kuryr.aio.vm_exec", "run",
                               "kuryr-host-h1", "--run-dir", str(h1.run), "--"]
    init = " ".join(vm.init_argv(h1)) + " "
    assert vm_exec.init_expect("kuryr-host-h1") in init
    # A VM of the same name is another machine: its init is not taken for the host's.
    assert vm_exec.init_expect("kuryr-vm-h1") not in init
    args = vm_exec.parser().parse_args(vm.init_argv(h1)[3:])
    assert (args.command, args.netns) == ("hold", "kuryr-host-h1")


@pytest.mark.parametrize("netns", ["h1", "kuryr-vm-", "kuryr-pod-h1", "kuryr-host-H1",
                                   "kuryr-host-abcdefghijk", "../kuryr-host-h1"])
def test_vm_exec_refuses_what_is_no_machine_namespace(netns):
    with pytest.raises(SystemExit):
        vm_exec.parser().parse_args(["run", netns, "--run-dir", "/r", "true"])
    with pytest.raises(SystemExit):
        vm_relay.parser().parse_args([netns, "--netns", "/n", "--port=9696"])


def test_host_relay_is_the_vms_on_the_hosts_namespace(h1):
    relay = vm.VmRelay(h1, [9696])
    assert relay.argv() == [sys.executable, "-m", "kuryr.aio.vm_relay", "kuryr-host-h1",
                            "--netns", "/run/netns/kuryr-host-h1", "--port=9696"]
    assert relay.expect in " ".join(relay.argv()) + " "
    assert relay.name == "host h1 relay"


def test_ovn_controller_runs_in_the_host_on_its_own_switch(layout, h1):
    part = host.HostOvnController(layout, h1, LONG + "a")
    argv = part.argv()
    assert argv[:len(vm.launcher(h1))] == vm.launcher(h1)
    assert argv[len(vm.launcher(h1)):] == [
        "ovn-controller", f"unix:{h1.ovs_run}/db.sock", "--no-chdir"]
    assert part.expect in " ".join(argv) + " "
    # Its control socket is the host's, not in the main host's /run/ovn.
    assert part.env() == {"OVN_RUNDIR": str(h1.run)}
    assert part.pidfile == h1.run / "ovn-controller.pid"


def test_kuryr_and_dockerd_run_inside_the_host(layout, h1):
    kuryr = host.HostKuryr(layout, h1, "h1")
    assert kuryr.argv() == [*vm.launcher(h1), sys.executable, "-m", "kuryr.cli", "serve",
                            "--config-file", str(h1.state / "kuryr.conf")]
    dockerd = vm.VmDockerd(h1).argv()
    assert dockerd[:len(vm.launcher(h1))] == vm.launcher(h1)
    assert f"--host=unix://{h1.run}/docker.sock" in dockerd
    assert f"--exec-root={h1.run}/docker" in dockerd
    assert "--bridge=none" in dockerd


def test_parts_start_in_order_kuryr_before_dockerd(layout):
    parts = host.SimulatedHost(layout, "h1").processes("h1", "198.18.0.2/24")
    assert [type(part) for part in parts] == [
        vm.VmInit, vm.VmRelay, host.HostSwitch, host.HostOvnController, host.HostKuryr,
        vm.VmDockerd]


# -- the chassis ------------------------------------------------------------------

def test_a_hosts_chassis_is_its_hostname_and_no_gateway(layout, h1):
    ids = host.HostSwitch(layout, h1, LONG + "a", "198.18.0.7/24").chassis()
    assert ids == {
        "system-id": LONG + "a", "hostname": LONG + "a",
        "ovn-remote": f"unix:{layout.sb_sock}", "ovn-encap-type": "geneve",
        "ovn-encap-ip": "198.18.0.7", "ovn-bridge": "br-int",
        "ovn-bridge-datapath-type": "netdev"}


def test_the_main_host_is_the_gateway():
    ids = switch.chassis_ids(Layout(Path("/s"), Path("/r"), "main"), "main", "198.18.0.1",
                             gateway=True)
    assert ids["ovn-bridge-mappings"] == "public:br-ex"
    assert ids["ovn-cms-options"] == "enable-chassis-as-gw"
    assert ids["ovn-encap-ip"] == "198.18.0.1"


def test_host_switch_uses_the_hosts_files(h1):
    files = host.HostSwitch(h1.stack, h1, "h1", "198.18.0.2/24").files
    assert files.db_sock == h1.ovs_run / "db.sock"
    assert files.db == h1.state / "ovs" / "conf.db"
    assert files.launcher == tuple(vm.launcher(h1))
    assert "br-phy" in host.HOST_DATAPATH_TAPS
    assert "br-phy" in switch.DATAPATH_TAPS


# -- the host's kuryr.conf ----------------------------------------------------------

def test_kuryr_conf_of_a_host(layout, h1):
    conf = parse_ini(host.kuryr_conf_text(layout, h1, LONG + "a"))
    assert dict(conf["DEFAULT"]) == {
        "port_driver": "veth", "host": LONG + "a",
        "kuryr_uri": "unix:///run/docker/plugins/kuryr.sock",
        "docker_uri": f"unix://{h1.run}/docker.sock", "state_dir": f"{h1.state}/kuryr",
        "docker_netns_dir": f"{h1.run}/docker/netns"}
    assert dict(conf["neutron"]) == {"auth_type": "none", "endpoint": "http://127.0.0.1:9696",
                                     "vif_plugging_timeout": "30"}
    assert dict(conf["binding"]) == {"ovs_bridge": "br-int"}
    assert dict(conf["publish"]) == {"floating_ip_network": "public"}


def test_kuryr_reads_the_host_conf_as_written(layout, h1, tmp_path):
    path = tmp_path / "kuryr.conf"
    path.write_text(host.kuryr_conf_text(layout, h1, LONG + "a"))
    conf = config.load(["--config-file", str(path)], config_files=[])
    assert (conf.port_driver, conf.host) == ("veth", LONG + "a")
    assert conf.binding.ovs_bridge == "br-int"
    assert conf.docker_netns_dir == str(h1.docker_netns_dir)


def test_the_vms_kuryr_conf_keeps_its_header(layout):
    text = vm.kuryr_conf_text(layout, layout.vm("t1"), "vlan")
    assert text.startswith("# Written by kuryr-aio: the Kuryr of simulated VM t1 "
                           "(nested-vlan), against the\n# stack's no-auth Neutron through "
                           "the VM's API relay (127.0.0.1 in the VM).\n")


# -- the underlay --------------------------------------------------------------------

def test_underlay_addresses_main_first_then_the_lowest_free():
    assert underlay.main_address() == "198.18.0.1/24"
    assert underlay.allocate([]) == "198.18.0.2/24"
    assert underlay.allocate(["198.18.0.2/24", "198.18.0.4/24"]) == "198.18.0.3/24"
    assert underlay.allocate(["198.18.0.3"]) == "198.18.0.2/24"


def test_underlay_runs_out_of_addresses():
    taken = [underlay.address(i) for i in range(2, 255)]
    with pytest.raises(StackError, match="no free address"):
        underlay.allocate(taken)
    with pytest.raises(ValueError, match="no underlay address"):
        underlay.address(255)


def test_underlay_refuses_a_prefix_the_machine_routes_elsewhere():
    routes = [("0.0.0.0", 0, "eth0"), ("192.0.2.0", 24, "eth0"), ("198.18.0.0", 24, "br-phy")]
    assert underlay.overlapping_routes(routes, own="br-phy") == []
    assert underlay.overlapping_routes([("198.18.0.0", 15, "eth0")], own="br-phy") == [
        "198.18.0.0/15 dev eth0"]
    assert underlay.overlapping_routes([("198.18.0.128", 25, "eth1")], own="br-phy") == [
        "198.18.0.128/25 dev eth1"]


# -- hostname and address are the host's for life --------------------------------------

def test_a_new_host_gets_its_hostname_and_the_lowest_free_address(layout):
    make(layout, "h1", "h1", "198.18.0.2/24")
    new = host.SimulatedHost(layout, "h2")
    new.host.state.mkdir(parents=True)
    assert new._claim(LONG + "b") == (LONG + "b", "198.18.0.3/24")
    assert (new.hostname, new.address) == (LONG + "b", "198.18.0.3/24")
    # Later `host up`s keep both, with or without --hostname.
    assert new._claim(None) == (LONG + "b", "198.18.0.3/24")
    assert new._claim(LONG + "b") == (LONG + "b", "198.18.0.3/24")


def test_a_hosts_hostname_cannot_change(layout):
    existing = make(layout, "h1", LONG + "a", "198.18.0.2/24")
    with pytest.raises(StackError, match=r"has hostname .*--purge"):
        existing._claim(LONG + "b")


def test_hostname_defaults_to_the_name(layout):
    new = host.SimulatedHost(layout, "h3")
    new.host.state.mkdir(parents=True)
    assert new._claim(None)[0] == "h3"


@pytest.mark.parametrize(("hostname", "reason"), [
    ("main", "main host's chassis"), (LONG + "a", "host h1 has hostname")])
def test_a_hostname_in_use_is_refused(layout, hostname, reason):
    make(layout, "h1", LONG + "a", "198.18.0.2/24")
    new = host.SimulatedHost(layout, "h2")
    new.host.state.mkdir(parents=True)
    with pytest.raises(StackError, match=reason):
        new._claim(hostname)
    assert new.hostname is None
    assert new.address is None


def test_two_hosts_sharing_a_long_prefix_are_two_chassis():
    others = {"h1": LONG + "a"}
    assert host.hostname_conflicts(LONG + "b", "main", others) is None
    assert host.hostname_conflicts(LONG + "a", "main", others) == f"host h1 has hostname {LONG}a"


# -- env exports -----------------------------------------------------------------------

def test_env_describes_the_host(layout):
    made = make(layout, "h1", LONG + "a", "198.18.0.2/24")
    lines = dict(line.removeprefix("export ").split("=", 1)
                 for line in made.env_exports().splitlines())
    values = {key: shlex.split(value)[0] if key != "KURYR_HOST_EXEC" else value
              for key, value in lines.items()}
    h1 = made.host
    assert values == {
        "DOCKER_HOST": f"unix://{h1.run}/docker.sock",
        "KURYR_HOST_NAME": LONG + "a",
        "KURYR_HOST_NETNS": "kuryr-host-h1",
        "KURYR_HOST_EXEC": shlex.quote(shlex.join(vm.launcher(h1))),
        "KURYR_HOST_KURYR_PIDFILE": f"{h1.run}/kuryr.pid",
        "KURYR_HOST_DOCKERD_PIDFILE": f"{h1.run}/dockerd.pid",
        "KURYR_HOST_OVN_CONTROLLER_PIDFILE": f"{h1.run}/ovn-controller.pid",
        "KURYR_HOST_KURYR_CONF": f"{h1.state}/kuryr.conf",
        "KURYR_HOST_UNDERLAY_IP": "198.18.0.2",
    }
    assert shlex.split(shlex.split(lines["KURYR_HOST_EXEC"])[0]) == vm.launcher(h1)


def test_env_of_a_host_that_was_never_made(layout):
    with pytest.raises(StackError, match="does not exist"):
        host.SimulatedHost(layout, "nope").env_exports()


# -- status and down ---------------------------------------------------------------------

def test_status_lists_hosts_by_name_and_hostname(layout, monkeypatch, capsys):
    from kuryr.aio import stack
    monkeypatch.setattr(stack, "status", lambda layout: [("neutron", [])])
    monkeypatch.setattr(vm, "status", lambda layout: [])
    hosts = [host.HostStatus("h1", LONG + "a", powered_off=False, problems=[]),
             host.HostStatus("h2", "h2", powered_off=True, problems=[])]
    monkeypatch.setattr(host, "status", lambda layout: hosts)
    assert stack.main_status(layout) == 0
    out = capsys.readouterr().out
    assert f"OK    host h1 ({LONG}a)\n" in out
    assert "OFF   host h2 (h2): powered off; `kuryr-aio host up h2` starts it" in out
    hosts.append(host.HostStatus("h3", "h3", powered_off=False,
                                 problems=["ovn-controller is not running"]))
    assert stack.main_status(layout) == 1
    assert "DOWN  host h3 (h3): ovn-controller is not running" in capsys.readouterr().out


def test_status_skips_hosts_deleted_without_purge(layout, monkeypatch):
    make(layout, "on", "on", "198.18.0.2/24")
    make(layout, "gone", "gone", "198.18.0.3/24").host.up_file.unlink()
    monkeypatch.setattr(host.SimulatedHost, "powered_off", lambda self: True)
    assert [(s.name, s.detail) for s in host.status(layout)] == [("on", "on")]


def test_down_powers_off_hosts_and_purge_deletes_them(layout, monkeypatch):
    calls = []
    make(layout, "on", "on", "198.18.0.2/24")
    make(layout, "off", "off", "198.18.0.3/24")
    make(layout, "gone", "gone", "198.18.0.4/24").host.up_file.unlink()
    monkeypatch.setattr(host.SimulatedHost, "powered_off", lambda self: self.name == "off")
    monkeypatch.setattr(host.SimulatedHost, "power_off",
                        lambda self, log: calls.append(("power_off", self.name)))
    monkeypatch.setattr(host.SimulatedHost, "delete",
                        lambda self, purge, log: calls.append(("delete", self.name, purge)))
    host.stop_all(layout, purge=False, log=lambda message: None)
    assert calls == [("power_off", "on")]
    calls.clear()
    host.stop_all(layout, purge=True, log=lambda message: None)
    assert calls == [("delete", name, True) for name in ("gone", "off", "on")]
    assert not layout.hosts_state.exists()


def test_stack_down_stops_vms_and_hosts_before_the_stack(layout, monkeypatch):
    from kuryr.aio import stack
    order = []

    class Part:
        name = "openvswitch"

        def down(self):
            order.append(self.name)

    monkeypatch.setattr(stack, "components", lambda *a, **kw: [Part()])
    monkeypatch.setattr(stack, "adopt_links_of_older_stack", lambda layout: [])
    monkeypatch.setattr(stack, "delete_node_interfaces", list)
    monkeypatch.setattr(stack.links, "delete_created", lambda *a: [])
    monkeypatch.setattr(vm, "stop_all", lambda layout, purge, log: order.append("vms"))
    monkeypatch.setattr(host, "stop_all",
                        lambda layout, purge, log: order.append(f"hosts purge={purge}"))
    stack.down(layout, purge=False, log=lambda message: None)
    assert order == ["vms", "hosts purge=False", "openvswitch"]


def test_link_records_of_concurrent_ups_are_all_kept(layout):
    from concurrent.futures import ThreadPoolExecutor

    from kuryr.aio import links
    names = [f"kul-h{i}" for i in range(40)]
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda name: links.record(layout, [name]), names))
    assert sorted(links.created(layout)) == sorted(names)
    links.delete_created(layout, names[:10], delete=lambda name: True)
    assert sorted(links.created(layout)) == sorted(names[10:])


def test_an_underlay_address_has_one_mac_whichever_host_has_it():
    from kuryr.aio.switch import underlay_mac

    assert underlay_mac("198.18.0.4/24") == "02:00:c6:12:00:04"
    assert underlay_mac("198.18.0.4/24") != underlay_mac("198.18.0.5/24")


def test_an_underlay_prefix_holding_an_address_the_machine_talks_to_is_refused():
    # This machine reaches its package registries at a TEST-NET-3 address
    # through its default route: no route of its own shows it.
    assert underlay.used_addresses_inside(["192.0.2.1", "10.255.255.53", "127.0.0.1",
                                           "pypi.org"]) == []
    assert underlay.used_addresses_inside(["198.18.0.80", "198.18.0.80", "::1"]) == [
        "198.18.0.80"]


def test_a_host_made_on_an_older_prefix_gets_an_address_on_this_one():
    assert underlay.within("198.18.0.9/24")
    assert not underlay.within("203.0.113.2/24")

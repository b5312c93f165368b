"""Simulated VMs (`kuryr-aio vm`): names, paths, each process's argv, the VM's
kuryr.conf, and what `vm up` / `vm down` ask of Neutron (against a fake)."""

import os
import shlex
import sys
import uuid
from pathlib import Path
from types import SimpleNamespace

import pytest

from kuryr import config
from kuryr.aio import cli, namespaces, switch, vm, vm_exec, vm_neutron, vm_relay
from kuryr.aio.layout import Layout, VmLayout, check_vm_name
from kuryr.aio.procs import StackError
from kuryr.neutron import marks
from tests.unit.ini import parse_ini


@pytest.fixture
def layout(tmp_path):
    return Layout(base=tmp_path / "state", run=tmp_path / "run", host="h1")


@pytest.fixture
def t1(layout):
    return layout.vm("t1")


# -- names and paths --------------------------------------------------------

@pytest.mark.parametrize("name", ["t1", "a", "0", "vm-1", "abcdefghij"])
def test_vm_names_that_fit_an_interface_name(name):
    assert check_vm_name(name) == name
    assert len(VmLayout(Layout(Path("/s"), Path("/r"), "h"), name).host_ifname) <= 15


@pytest.mark.parametrize("name", ["", "-a", "A", "a_b", "a.b", "abcdefghijk", "a b", "a/b"])
def test_vm_names_refused(name):
    with pytest.raises(ValueError, match="bad VM name"):
        check_vm_name(name)
    with pytest.raises(SystemExit):
        cli.parser().parse_args(["vm", "up", name])


def test_vm_mode_is_checked_by_the_cli():
    assert cli.parser().parse_args(["vm", "up", "t1", "--mode", "macvlan"]).mode == "macvlan"
    assert cli.parser().parse_args(["vm", "up", "t1"]).mode is None
    with pytest.raises(SystemExit):
        cli.parser().parse_args(["vm", "up", "t1", "--mode", "ipvlan"])
    args = cli.parser().parse_args(["vm", "down", "t1", "--purge"])
    assert (args.vm_command, args.name, args.purge) == ("down", "t1", True)


def test_vm_paths_are_its_own(layout, t1):
    assert t1.state == layout.base / "vms" / "t1"
    assert t1.run == layout.run / "vms" / "t1"
    assert t1.netns == "kuryr-vm-t1"
    assert t1.netns_path == Path("/run/netns/kuryr-vm-t1")
    assert t1.host_ifname == "kvm-t1"
    assert t1.neutron_name == "kuryr-aio-vm-t1"
    assert t1.log("kuryr") == layout.logs / "vm-t1-kuryr.log"
    # What Nova's instance UUID would be: stable for the name.
    assert t1.device_id == str(uuid.uuid5(uuid.NAMESPACE_DNS, "kuryr-aio-vm-t1"))
    assert t1.device_id != layout.vm("t2").device_id


def test_private_mounts_cover_what_a_second_dockerd_and_ovs_share(t1):
    mounts = t1.private_mounts()
    assert set(mounts) == {Path(p) for p in (
        "/run/docker/plugins", "/etc/docker/plugins", "/usr/lib/docker/plugins",
        "/run/openvswitch", "/run/containerd")}
    assert len(set(mounts.values())) == len(mounts)
    assert all(own.is_relative_to(t1.run) for own in mounts.values())
    # The init (which knows only the run dir) binds the same directories.
    assert vm_exec.vm_private_mounts(t1.run) == mounts
    assert t1.ovs_run == mounts[Path("/run/openvswitch")]
    assert t1.plugin_socket == mounts[Path("/run/docker/plugins")] / "kuryr.sock"


# -- argv of each process ---------------------------------------------------

def test_launcher_and_init_name_the_vm_and_its_run_dir(t1):
    prefix = [sys.executable, "-m", "kuryr.aio.vm_exec", "run", "kuryr-vm-t1", "--run-dir",
              str(t1.run), "--"]
    assert vm.launcher(t1) == prefix
    init = vm.init_argv(t1)
    assert init == [sys.executable, "-m", "kuryr.aio.vm_exec", "hold", "kuryr-vm-t1",
                    "--run-dir", str(t1.run)]
    # The init is recognised by its command line (a whole argument: t1 is not t10).
    assert vm_exec.init_expect("kuryr-vm-t1") in " ".join(init) + " "
    assert vm_exec.init_expect("kuryr-vm-t1") not in " ".join(
        vm.init_argv(VmLayout(t1.stack, "t10")))


def test_vm_exec_parses_what_the_launcher_builds(t1):
    args = vm_exec.parser().parse_args([*vm.launcher(t1)[3:], "ip", "-br", "a"])
    assert (args.command, args.netns, args.run_dir, args.argv) == (
        "run", "kuryr-vm-t1", t1.run, ["ip", "-br", "a"])
    args = vm_exec.parser().parse_args(vm.init_argv(t1)[3:])
    assert (args.command, args.netns, args.run_dir) == ("hold", "kuryr-vm-t1", t1.run)


def test_launcher_refuses_a_vm_without_init(t1):
    with pytest.raises(SystemExit, match="vm t1 is not running"):
        vm_exec.enter("kuryr-vm-t1", t1.run)


def test_relay_listens_for_keystone_too_in_keystone_mode(layout, t1):
    assert vm.relay_ports(layout) == [9696]
    layout.set_auth_mode("keystone")
    assert vm.relay_ports(layout) == [9696, 5000]
    argv = vm.relay_argv(t1, vm.relay_ports(layout))
    assert argv == [sys.executable, "-m", "kuryr.aio.vm_relay", "kuryr-vm-t1", "--netns",
                    "/run/netns/kuryr-vm-t1", "--port=9696", "--port=5000"]
    # Started in the host's namespaces, not through the launcher.
    assert "kuryr.aio.vm_exec" not in argv
    args = vm_relay.parser().parse_args(argv[3:])
    assert (args.machine, args.netns, args.port) == (
        "kuryr-vm-t1", Path("/run/netns/kuryr-vm-t1"), [9696, 5000])


def test_relay_restarts_when_its_ports_change(layout, t1, monkeypatch):
    relay = vm.VmRelay(t1, [9696, 5000])
    running = " ".join(vm.relay_argv(t1, [9696])) + " "
    monkeypatch.setattr(vm.procs, "cmdline", lambda pidfile: running)
    assert relay.outdated()
    assert relay.expect in running
    assert not vm.VmRelay(t1, [9696]).outdated()


def test_kuryr_and_dockerd_run_inside_the_vm(t1):
    kuryr = vm.kuryr_argv(t1)
    assert kuryr[:len(vm.launcher(t1))] == vm.launcher(t1)
    assert kuryr[len(vm.launcher(t1)):] == [sys.executable, "-m", "kuryr.cli", "serve",
                                            "--config-file", str(t1.kuryr_conf)]
    assert vm.VmKuryr(t1.stack, t1, "vlan").expect in " ".join(kuryr) + " "
    dockerd = vm.dockerd_argv(t1)
    assert dockerd[:len(vm.launcher(t1))] == vm.launcher(t1)
    own = dockerd[len(vm.launcher(t1)):]
    assert own[0] == "dockerd"
    for flag in ("--iptables=false", "--ip-masq=false", "--ip-forward=false", "--bridge=none",
                 f"--data-root={t1.state / 'docker'}", f"--exec-root={t1.run / 'docker'}",
                 f"--pidfile={t1.run / 'dockerd.docker.pid'}",
                 f"--host=unix://{t1.run / 'docker.sock'}"):
        assert flag in own
    assert vm.VmDockerd(t1).expect in " ".join(dockerd) + " "
    # Its containers' namespaces are under its exec-root (seen: <exec-root>/netns).
    assert t1.docker_netns_dir == t1.run / "docker" / "netns"


def test_host_and_vm_open_vswitch_share_one_way_of_starting(layout, t1):
    host = switch.OpenVSwitch(layout).files
    assert host.ovsdb_server_argv() == [
        "ovsdb-server", str(layout.base / "ovs" / "conf.db"),
        "--remote=punix:/run/openvswitch/db.sock",
        "--remote=db:Open_vSwitch,Open_vSwitch,manager_options",
        "--pidfile=/run/openvswitch/ovsdb-server.pid", "--detach", "--no-chdir",
        f"--log-file={layout.log('ovsdb-server')}"]
    assert host.vswitchd_argv() == [
        "ovs-vswitchd", "unix:/run/openvswitch/db.sock",
        "--pidfile=/run/openvswitch/ovs-vswitchd.pid", "--detach", "--no-chdir",
        f"--log-file={layout.log('ovs-vswitchd')}"]
    own = vm.switch_files(t1)
    prefix = vm.launcher(t1)
    assert own.ovsdb_server_argv()[:len(prefix)] == prefix
    assert own.ovsdb_server_argv()[len(prefix):] == [
        "ovsdb-server", str(t1.state / "ovs" / "conf.db"), f"--remote=punix:{t1.ovs_run}/db.sock",
        "--remote=db:Open_vSwitch,Open_vSwitch,manager_options",
        f"--pidfile={t1.ovs_run}/ovsdb-server.pid", "--detach", "--no-chdir",
        f"--log-file={t1.log('ovsdb-server')}"]
    assert own.vswitchd_argv()[len(prefix):][:2] == ["ovs-vswitchd", f"unix:{t1.ovs_run}/db.sock"]


def test_vm_vsctl_names_the_vm_database(t1, monkeypatch):
    calls = []
    monkeypatch.setattr(switch.procs, "run", lambda argv, **kw: calls.append(argv) or "")
    vm.switch_files(t1).vsctl("add-br", "br-vm")
    switch.vsctl("show")
    assert calls == [["ovs-vsctl", f"--db=unix:{t1.ovs_run}/db.sock", "--timeout=10",
                      "add-br", "br-vm"],
                     ["ovs-vsctl", "--timeout=10", "show"]]


def test_the_vm_kernel_ignores_its_switch_port():
    assert namespaces.bridge_port_sysctls("eth0") == {
        "net/ipv4/conf/eth0/rp_filter": "1", "net/ipv4/conf/eth0/arp_ignore": "1",
        "net/ipv6/conf/eth0/disable_ipv6": "1"}


# -- the VM's kuryr.conf ----------------------------------------------------

def test_kuryr_conf_of_a_vlan_vm(layout, t1):
    conf = parse_ini(vm.kuryr_conf_text(layout, t1, "vlan"))
    assert dict(conf["DEFAULT"]) == {
        "port_driver": "nested-vlan", "host": "vm-t1",
        "kuryr_uri": "unix:///run/docker/plugins/kuryr.sock",
        "docker_uri": f"unix://{t1.run}/docker.sock", "state_dir": f"{t1.state}/kuryr",
        "docker_netns_dir": f"{t1.run}/docker/netns"}
    assert dict(conf["neutron"]) == {"auth_type": "none", "endpoint": "http://127.0.0.1:9696",
                                     "vif_plugging_timeout": "30"}
    assert dict(conf["binding"]) == {"link_iface": "eth0", "vlan_tagging": "ovs",
                                     "ovs_bridge": "br-vm"}


def test_kuryr_conf_of_a_macvlan_vm(layout, t1):
    conf = parse_ini(vm.kuryr_conf_text(layout, t1, "macvlan"))
    assert conf["DEFAULT"]["port_driver"] == "nested-macvlan"
    assert dict(conf["binding"]) == {"link_iface": "eth0", "pairs_device": "routed-veth"}


def test_kuryr_conf_in_keystone_mode_logs_in_as_kuryr(layout, t1):
    layout.set_auth_mode("keystone")
    conf = parse_ini(vm.kuryr_conf_text(layout, t1, "vlan"))
    assert conf["neutron"]["auth_type"] == "password"
    assert conf["neutron"]["auth_url"] == "http://127.0.0.1:5000/v3"  # through the relay


@pytest.mark.parametrize("mode", ["vlan", "macvlan"])
def test_kuryr_reads_the_vm_conf_as_written(layout, t1, tmp_path, mode):
    path = tmp_path / "kuryr.conf"
    path.write_text(vm.kuryr_conf_text(layout, t1, mode))
    conf = config.load(["--config-file", str(path)], config_files=[])
    assert conf.port_driver == vm.PORT_DRIVERS[mode]
    assert conf.host == "vm-t1"
    assert conf.binding.link_iface == "eth0"
    assert conf.docker_netns_dir == str(t1.docker_netns_dir)
    if mode == "vlan":
        assert (conf.binding.vlan_tagging, conf.binding.ovs_bridge) == ("ovs", "br-vm")
    else:
        assert conf.binding.pairs_device == "routed-veth"


def test_kuryr_restarts_when_its_conf_changes(layout, t1):
    kuryr = vm.VmKuryr(layout, t1, "vlan")
    assert kuryr.outdated()  # never written
    t1.state.mkdir(parents=True)
    t1.plugin_socket.parent.mkdir(parents=True)
    kuryr.prepare()
    assert not kuryr.outdated()
    assert t1.kuryr_conf.stat().st_mode & 0o777 == 0o600
    layout.set_auth_mode("keystone")
    assert kuryr.outdated()


# -- env, mode ---------------------------------------------------------------

def test_env_points_docker_at_the_vm(layout):
    text = vm.VirtualMachine(layout, "t1").env_exports()
    lines = dict(line.removeprefix("export ").split("=", 1) for line in text.splitlines())
    assert lines["DOCKER_HOST"] == f"unix://{layout.run}/vms/t1/docker.sock"
    assert lines["KURYR_VM_NETNS"] == "kuryr-vm-t1"
    assert lines["KURYR_VM_KURYR_PIDFILE"] == f"{layout.run}/vms/t1/kuryr.pid"
    assert lines["KURYR_VM_KURYR_CONF"] == f"{layout.base}/vms/t1/kuryr.conf"
    assert shlex.split(shlex.split(lines["KURYR_VM_EXEC"])[0]) == vm.launcher(layout.vm("t1"))


def test_a_vm_keeps_its_mode(layout):
    machine = vm.VirtualMachine(layout, "t1")
    assert machine._choose_mode(None) == "vlan"
    assert machine._choose_mode("macvlan") == "macvlan"
    machine.vm.state.mkdir(parents=True)
    machine.vm.mode_file.write_text("macvlan\n")
    assert machine._choose_mode(None) == "macvlan"
    with pytest.raises(StackError, match="exists in macvlan mode"):
        machine._choose_mode("vlan")


def test_vm_names_found_from_either_directory(layout):
    (layout.vms_state / "a").mkdir(parents=True)
    (layout.vms_run / "b").mkdir(parents=True)
    (layout.vms_state / "b").mkdir()
    assert vm.names(layout) == ["a", "b"]
    (layout.vms_state / "b" / "mode").write_text("vlan\n")
    assert [m.name for m in vm.existing(layout)] == ["b"]


# -- Neutron, against a fake -------------------------------------------------

class FakeAPI:
    """The few network proxy calls a VM makes, over dicts of SimpleNamespace."""

    def __init__(self):
        self.nets, self.subnet_rows, self.groups, self.rules = {}, {}, {}, []
        self.port_rows, self.trunks, self.calls = {}, {}, []
        self.next_id = 0

    def _id(self, kind):
        self.next_id += 1
        return f"{kind}-{self.next_id}"

    def find_network(self, name):
        return next((n for n in self.nets.values() if n.name == name), None)

    def create_network(self, **attrs):
        net = SimpleNamespace(id=self._id("net"), mtu=1442, project_id="p", tags=[], **attrs)
        self.nets[net.id] = net
        self.calls.append(("create_network", attrs["name"]))
        return net

    def networks(self, tags):
        return [n for n in self.nets.values() if tags in n.tags]

    def delete_network(self, net, ignore_missing):
        self.calls.append(("delete_network", net.id))
        self.nets.pop(net.id, None)

    def subnets(self, network_id):
        return [s for s in self.subnet_rows.values() if s.network_id == network_id]

    def create_subnet(self, **attrs):
        sub = SimpleNamespace(id=self._id("subnet"), **attrs)
        self.subnet_rows[sub.id] = sub
        return sub

    def security_groups(self, name, project_id):
        return [g for g in self.groups.values() if g.name == name]

    def find_security_group(self, name, ignore_missing):
        return next((g for g in self.groups.values() if g.name == name), None)

    def create_security_group(self, **attrs):
        group = SimpleNamespace(id=self._id("sg"), **attrs)
        self.groups[group.id] = group
        return group

    def security_group_rules(self, security_group_id):
        return [r for r in self.rules if r.security_group_id == security_group_id]

    def create_security_group_rule(self, **attrs):
        self.rules.append(SimpleNamespace(protocol=None, remote_ip_prefix=None,
                                          remote_group_id=None, **attrs))

    def add_port(self, **attrs):
        defaults = {"fixed_ips": [], "allowed_address_pairs": [], "tags": [], "name": "",
                    "device_owner": "", "binding_host_id": "", "security_group_ids": [],
                    "status": "DOWN", "mac_address": "fa:16:3e:00:00:01", "network_id": ""}
        port = SimpleNamespace(**{**defaults, "id": self._id("port"), **attrs})
        self.port_rows[port.id] = port
        return port

    def create_port(self, **attrs):
        subnet = self.subnet_rows[attrs.pop("fixed_ips")[0]["subnet_id"]]
        self.calls.append(("create_port", attrs["name"]))
        return self.add_port(fixed_ips=[{"subnet_id": subnet.id,
                                         "ip_address": "192.168.250.10"}], **attrs)

    def update_port(self, port, **attrs):
        self.calls.append(("update_port", port.id, tuple(sorted(attrs))))
        vars(port).update(attrs)
        return port

    def ports(self, name=None, device_id=None, network_id=None, tags=None):
        return [p for p in self.port_rows.values()
                if (name is None or p.name == name)
                and (device_id is None or getattr(p, "device_id", None) == device_id)
                and (network_id is None or p.network_id == network_id)
                and (tags is None or tags in p.tags)]

    def get_port(self, port_id):
        return self.port_rows[port_id]

    def delete_port(self, port, ignore_missing):
        self.calls.append(("delete_port", port.id))
        self.port_rows.pop(port.id, None)

    def find_trunk(self, name):
        return next((t for t in self.trunks.values() if t.name == name), None)

    def create_trunk(self, **attrs):
        trunk = SimpleNamespace(id=self._id("trunk"), sub_ports=[], **attrs)
        self.trunks[trunk.id] = trunk
        self.calls.append(("create_trunk", attrs["port_id"]))
        return trunk

    def delete_trunk_subports(self, trunk, subports):
        self.calls.append(("delete_trunk_subports", tuple(s["port_id"] for s in subports)))
        trunk.sub_ports = []

    def delete_trunk(self, trunk, ignore_missing):
        assert not trunk.sub_ports, "Neutron refuses a trunk with sub-ports"
        self.calls.append(("delete_trunk", trunk.id))
        self.trunks.pop(trunk.id, None)


def test_vm_port_is_made_once_and_bound_as_nova_binds(t1):
    api = FakeAPI()
    default = api.create_security_group(name="default")
    port = vm_neutron.ensure_port(api, t1, "h1")
    again = vm_neutron.ensure_port(api, t1, "h1")
    assert port == again
    assert port.address == "192.168.250.10/24"
    assert port.mtu == 1442
    made = [c for c in api.calls if c[0].startswith("create")]
    assert made == [("create_network", "kuryr-aio-vms"), ("create_port", "kuryr-aio-vm-t1")]
    neutron_port = api.port_rows[port.id]
    assert neutron_port.device_owner == "compute:nova"
    assert neutron_port.device_id == t1.device_id
    assert neutron_port.binding_host_id == "h1"
    group = api.find_security_group("kuryr-aio-vm", ignore_missing=True)
    assert neutron_port.security_group_ids == [default.id, group.id]
    assert {(r.direction, r.ether_type) for r in api.rules} == {("ingress", "IPv4"),
                                                              ("ingress", "IPv6")}
    subnet = next(iter(api.subnet_rows.values()))
    assert (subnet.cidr, subnet.gateway_ip, subnet.is_dhcp_enabled) == (
        "192.168.250.0/24", "192.168.250.1", False)
    assert subnet.allocation_pools == [{"start": "192.168.250.10", "end": "192.168.250.250"}]


def test_vm_port_rebound_to_this_host(t1):
    api = FakeAPI()
    port = vm_neutron.ensure_port(api, t1, "h1")
    vm_neutron.ensure_port(api, t1, "h2")
    assert api.port_rows[port.id].binding_host_id == "h2"


def test_trunk_made_once_with_the_vm_port_as_parent(t1):
    api = FakeAPI()
    trunk = vm_neutron.ensure_trunk(api, t1, "port-1")
    assert vm_neutron.ensure_trunk(api, t1, "port-1") is trunk
    assert [c for c in api.calls if c[0] == "create_trunk"] == [("create_trunk", "port-1")]
    with pytest.raises(StackError, match="another parent port"):
        vm_neutron.ensure_trunk(api, t1, "port-2")


def test_deleting_a_vm_deletes_what_its_nested_kuryr_left(t1):
    api = FakeAPI()
    vm_port = api.port_rows[vm_neutron.ensure_port(api, t1, "h1").id]
    trunk = vm_neutron.ensure_trunk(api, t1, vm_port.id)
    # Neutron makes a sub-port's device_owner "trunk:subport": the name tells.
    kuryr_sub = api.add_port(name="kuryr-port-pool", device_owner="trunk:subport")
    tagged_sub = api.add_port(device_owner="trunk:subport", tags=[marks.vm_tag(vm_port.id)])
    users_sub = api.add_port(name="mine", device_owner="trunk:subport")
    trunk.sub_ports = [{"port_id": p.id, "segmentation_type": "vlan", "segmentation_id": i}
                       for i, p in enumerate((kuryr_sub, tagged_sub, users_sub), 1)]
    # nested-macvlan: a port holding one of the VM port's address pairs.
    paired = api.add_port(device_owner="compute:kuryr", network_id=vm_port.network_id,
                          mac_address="fa:16:3e:00:00:99",
                          fixed_ips=[{"ip_address": "192.168.250.77"}])
    # Kuryr's pairs hold the VM port's own MAC, not the address holder's.
    vm_port.allowed_address_pairs = [{"ip_address": "192.168.250.77",
                                      "mac_address": vm_port.mac_address}]
    host_container = api.add_port(device_owner="compute:kuryr", network_id=vm_port.network_id,
                                  fixed_ips=[{"ip_address": "192.168.250.78"}])
    deleted = vm_neutron.delete_vm(api, t1)
    assert set(api.port_rows) == {users_sub.id, host_container.id}
    steps = [c[0] for c in api.calls if c[0].startswith("delete")]
    # Sub-ports leave the trunk, the trunk goes, then the ports (the VM's last).
    assert steps[:2] == ["delete_trunk_subports", "delete_trunk"]
    assert api.calls[-1] == ("delete_port", vm_port.id)
    assert {kuryr_sub.id, tagged_sub.id, paired.id} <= {c[1] for c in api.calls
                                                         if c[0] == "delete_port"}
    assert deleted[0] == "trunk kuryr-aio-vm-t1"
    assert deleted[-1] == "port kuryr-aio-vm-t1"
    assert vm_neutron.delete_vm(api, t1) == []  # idempotent


def test_purging_a_vm_deletes_its_kuryrs_empty_networks(t1):
    api = FakeAPI()
    tag = marks.host_tag("vm-t1")
    empty = api.create_network(name="kuryr-net-1")
    empty.tags.append(tag)
    pooled = api.create_network(name="kuryr-net-2")
    pooled.tags.append(tag)
    left = api.add_port(network_id=pooled.id, name="kuryr-port-pool", device_owner="kuryr:pool")
    used = api.create_network(name="kuryr-net-3")
    used.tags.append(tag)
    users = api.add_port(network_id=used.id, name="mine")
    api.add_port(network_id=used.id, name="kuryr-port-pool", device_owner="kuryr:pool")
    others = api.create_network(name="kuryr-net-4")
    others.tags.append(marks.host_tag("h1"))
    assert vm_neutron.delete_vm_networks(api, t1) == [
        "network kuryr-net-1", f"port {left.id} (kuryr:pool, Kuryr's)",
        "network kuryr-net-2"]
    assert set(api.nets) == {used.id, others.id}
    assert users.id in api.port_rows


@pytest.mark.skipif(os.geteuid() != 0, reason="entering a network namespace needs root")
def test_sockets_made_in_a_namespace_stay_usable():
    with vm_relay.listen_in("/proc/self/ns/net", [0])[0] as sock:
        assert sock.getsockname()[0] == "127.0.0.1"
        assert namespaces.connects("/proc/self/ns/net", sock.getsockname()[1])


# -- the stack's down and status ----------------------------------------------

def test_stack_down_stops_the_vms_before_anything_else(layout, monkeypatch):
    from kuryr.aio import stack
    order = []

    class Part:
        def __init__(self, name):
            self.name = name

        def down(self):
            order.append(self.name)

    monkeypatch.setattr(stack, "components", lambda *a, **kw: [Part("kuryr"), Part("dockerd")])
    monkeypatch.setattr(stack, "adopt_links_of_older_stack", lambda layout: [])
    monkeypatch.setattr(stack, "delete_node_interfaces", list)
    monkeypatch.setattr(stack.links, "delete_created", lambda *a: [])
    monkeypatch.setattr(vm, "stop_all",
                        lambda layout, purge, log: order.append(f"vms purge={purge}"))
    stack.down(layout, log=lambda message: None)
    assert order == ["vms purge=False", "dockerd", "kuryr"]


def test_stop_all_powers_off_running_vms_and_purge_deletes_every_one(layout, monkeypatch):
    calls = []
    for name, mode in (("on", "vlan"), ("off", "macvlan"), ("gone", None)):
        (layout.vms_state / name).mkdir(parents=True)
        if mode:
            (layout.vms_state / name / "mode").write_text(mode)
    monkeypatch.setattr(vm.VirtualMachine, "powered_off", lambda self: self.name == "off")
    monkeypatch.setattr(vm.VirtualMachine, "power_off",
                        lambda self, log: calls.append(("power_off", self.name)))
    monkeypatch.setattr(vm.VirtualMachine, "delete",
                        lambda self, purge, log: calls.append(("delete", self.name, purge)))
    vm.stop_all(layout, purge=False, log=lambda message: None)
    assert calls == [("power_off", "on")]
    calls.clear()
    vm.stop_all(layout, purge=True, log=lambda message: None)
    assert calls == [("delete", name, True) for name in ("gone", "off", "on")]
    assert not layout.vms_state.exists()


def test_status_lists_vms_and_a_powered_off_one_is_no_fault(layout, monkeypatch, capsys):
    from kuryr.aio import stack
    monkeypatch.setattr(stack, "status", lambda layout: [("neutron", [])])
    machines = [vm.VmStatus("t1", "vlan", powered_off=False, problems=[]),
                vm.VmStatus("t2", "macvlan", powered_off=True, problems=[])]
    monkeypatch.setattr(vm, "status", lambda layout: machines)
    assert stack.main_status(layout) == 0
    out = capsys.readouterr().out
    assert "OK    vm t1 (vlan)\n" in out
    assert "OFF   vm t2 (macvlan): powered off" in out
    machines.append(vm.VmStatus("t3", "vlan", powered_off=False,
                                problems=["dockerd is not running"]))
    assert stack.main_status(layout) == 1
    assert "DOWN  vm t3 (vlan): dockerd is not running" in capsys.readouterr().out

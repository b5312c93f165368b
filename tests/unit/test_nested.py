"""Nested placements (kuryr/core/placement.py) against a fake Neutron that keeps
Neutron's own rules: a trunk refuses a VLAN id or a port it already has, and
removing a port that is no sub-port is NotFound; a PUT with if_revision fails
with 412 (StaleRevision) once someone else wrote the port."""

from __future__ import annotations

import dataclasses
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from kuryr import errors
from kuryr.core.placement import (
    AddressPairs,
    NestedSetupError,
    TrunkSubports,
    find_vm_port,
    nested_placement,
    vm_port_once_active,
)
from kuryr.neutron import marks
from kuryr.neutron.types import FixedIP, Port, SubPort, Trunk

VM = Port(id="vm-port-0000", network_id="net", mac_address="fa:16:3e:00:00:aa",
          fixed_ips=(FixedIP("sub", "192.168.250.10"),), status="ACTIVE", revision_number=3)


def port(n: int) -> Port:
    return Port(id=f"port-{n:04d}", network_id="net", mac_address=f"fa:16:3e:00:01:{n:02x}",
                fixed_ips=(FixedIP("sub", f"192.168.250.{100 + n}"),),
                device_owner=marks.POOL_DEVICE_OWNER)


class TrunkNeutron:
    def __init__(self, subs=()):
        self.trunk = Trunk(id="trunk-1", port_id=VM.id, sub_ports=tuple(subs))
        self.vm = VM
        self.lock = threading.Lock()
        self.puts = 0
        self.gets = 0
        self.stale = 0  # writers to interleave before the next if_revision PUT
        self.owners = {}  # port id -> device_owner Kuryr set back after add_subports

    # trunks
    def trunk_of(self, parent):
        return self.trunk if parent == self.trunk.port_id else None

    def get_trunk(self, trunk_id):
        self.gets += 1
        return self.trunk

    def add_subports(self, trunk_id, subs):
        with self.lock:
            self.puts += 1
            have = self.trunk.sub_ports
            if {s.segmentation_id for s in subs} & {s.segmentation_id for s in have} or \
                    len({s.segmentation_id for s in subs}) != len(subs):
                raise errors.Conflict("segmentation id in use")
            self.trunk = dataclasses.replace(self.trunk, sub_ports=(*have, *subs))

    def remove_subports(self, trunk_id, port_ids):
        with self.lock:
            self.puts += 1
            have = {s.port_id for s in self.trunk.sub_ports}
            if not set(port_ids) <= have:
                raise errors.NotFound("not a sub-port")
            self.trunk = dataclasses.replace(self.trunk, sub_ports=tuple(
                s for s in self.trunk.sub_ports if s.port_id not in port_ids))

    # the VM's port
    def get_port(self, port_id):
        self.gets += 1
        return self.vm

    def update_port(self, port_id, *, allowed_address_pairs=None, if_revision=None,
                    device_owner=None):
        if device_owner is not None:  # Kuryr's owner back on a sub-port
            with self.lock:
                self.owners[port_id] = device_owner
            return None
        with self.lock:
            self.puts += 1
            if self.stale:  # someone else wrote it since it was read
                self.stale -= 1
                self.vm = dataclasses.replace(self.vm, revision_number=self.vm.revision_number + 1)
            if if_revision is not None and if_revision != self.vm.revision_number:
                raise errors.StaleRevision("412 precondition failed")
            self.vm = dataclasses.replace(
                self.vm, allowed_address_pairs=tuple(allowed_address_pairs),
                revision_number=self.vm.revision_number + 1)
            return self.vm

    def ports(self, mac_address=None, **filters):
        return [p for p in (self.vm,) if p.mac_address == mac_address]

    def find_port(self, name_or_id):
        if name_or_id != self.vm.id:
            raise errors.NotFound(f"Neutron port {name_or_id!r} does not exist")
        return self.vm


def vlans(neutron):
    return sorted(s.segmentation_id for s in neutron.trunk.sub_ports)


def test_nested_ports_carry_the_vms_tag_and_are_never_bound():
    neutron = TrunkNeutron()
    trunk = TrunkSubports("vm1", VM, neutron.trunk, neutron)
    assert trunk.tags == (marks.vm_tag(VM.id),)
    assert len(trunk.tags[0]) <= marks.TAG_MAX
    assert trunk.binding_host_id is None  # a VM's credentials have no binding rights
    assert trunk.port_filters() == {"tags": marks.vm_tag(VM.id)}
    assert trunk.holds(dataclasses.replace(port(1), tags=trunk.tags))
    assert not trunk.holds(dataclasses.replace(port(1), binding_host_id="vm1"))


def test_ten_concurrent_starts_get_distinct_vlan_ids_in_one_put_each():
    neutron = TrunkNeutron()
    trunk = TrunkSubports("vm1", VM, neutron.trunk, neutron)
    with ThreadPoolExecutor(10) as pool:
        list(pool.map(lambda n: trunk.attach([port(n)]), range(10)))
    assert vlans(neutron) == list(range(1, 11))
    assert neutron.puts == 10
    assert {trunk.vlan_of(port(n).id) for n in range(10)} == set(range(1, 11))


def test_a_pool_fill_adds_all_its_subports_in_one_put():
    neutron = TrunkNeutron()
    trunk = TrunkSubports("vm1", VM, neutron.trunk, neutron)
    trunk.attach([port(n) for n in range(5)])
    assert vlans(neutron) == [1, 2, 3, 4, 5]
    assert neutron.puts == 1  # one add_subports for all
    # Neutron's trunk driver made them trunk:subport: Kuryr's owner is put back.
    assert neutron.owners == {port(n).id: marks.POOL_DEVICE_OWNER for n in range(5)}


def test_vlan_ids_in_use_come_from_the_trunk_and_freed_ids_are_reused():
    neutron = TrunkNeutron(subs=[SubPort("old", 1), SubPort("older", 3)])  # a restart
    trunk = TrunkSubports("vm1", VM, neutron.trunk, neutron)
    trunk.attach([port(1), port(2)])
    assert trunk.vlan_of(port(1).id) == 2
    assert trunk.vlan_of(port(2).id) == 4
    trunk.detach([port(1)])
    assert trunk.vlan_of(port(1).id) is None
    trunk.attach([port(3)])
    assert trunk.vlan_of(port(3).id) == 2


def test_an_id_taken_behind_kuryrs_back_is_learnt_and_another_one_used():
    neutron = TrunkNeutron()
    trunk = TrunkSubports("vm1", VM, neutron.trunk, neutron)
    neutron.trunk = dataclasses.replace(neutron.trunk, sub_ports=(SubPort("users", 1),))
    trunk.attach([port(1)])
    assert trunk.vlan_of(port(1).id) == 2
    assert neutron.gets == 1


def test_a_failed_add_frees_its_ids():
    neutron = TrunkNeutron()
    trunk = TrunkSubports("vm1", VM, neutron.trunk, neutron)

    def refuse(trunk_id, subs):
        raise errors.BackendUnavailable("neutron down")
    neutron.add_subports = refuse
    with pytest.raises(errors.BackendUnavailable):
        trunk.attach([port(1)])
    assert trunk.vlan_of(port(1).id) is None


def test_detach_of_ports_already_off_the_trunk_removes_the_others():
    neutron = TrunkNeutron()
    trunk = TrunkSubports("vm1", VM, neutron.trunk, neutron)
    trunk.attach([port(1), port(2)])
    neutron.trunk = dataclasses.replace(neutron.trunk, sub_ports=neutron.trunk.sub_ports[1:])
    trunk.detach([port(1), port(2)])  # port 1 was removed by hand
    assert neutron.trunk.sub_ports == ()
    trunk.detach([port(9)])  # never attached: nothing to do, no request
    assert trunk.vlan_of(port(2).id) is None


def test_address_pairs_survive_concurrent_starts_and_a_users_edit():
    neutron = TrunkNeutron()
    pairs = AddressPairs("vm1", VM, neutron)
    neutron.stale = 3  # three writes by someone else land between reads and PUTs
    with ThreadPoolExecutor(10) as pool:
        list(pool.map(lambda n: pairs.attach([port(n)]), range(10)))
    assert sorted(ip for ip, _ in neutron.vm.allowed_address_pairs) == sorted(
        f"192.168.250.{100 + n}" for n in range(10))
    # The VM port's own MAC (the only one Neutron 29 with OVN accepts but VRRP's).
    assert {mac for _, mac in neutron.vm.allowed_address_pairs} == {""}
    pairs.detach([port(n) for n in range(0, 10, 2)])
    assert sorted(ip for ip, _ in neutron.vm.allowed_address_pairs) == sorted(
        f"192.168.250.{100 + n}" for n in range(1, 10, 2))


def test_a_users_vrrp_pairs_are_kept_as_they_are():
    vrrp = ("192.168.250.5", "00:00:5e:00:01:05")
    neutron = TrunkNeutron()
    neutron.vm = dataclasses.replace(VM, allowed_address_pairs=(vrrp,))
    pairs = AddressPairs("vm1", neutron.vm, neutron)
    pairs.attach([port(1)])
    pairs.detach([port(1)])
    assert neutron.vm.allowed_address_pairs == (vrrp,)


def test_start_up_finds_the_vm_port_by_the_interfaces_mac_or_by_name():
    neutron = TrunkNeutron()
    assert find_vm_port(neutron, "", VM.mac_address, "eth0") == VM  # type: ignore[arg-type]
    assert find_vm_port(neutron, VM.id, None, "") == VM  # type: ignore[arg-type]
    with pytest.raises(NestedSetupError, match="no Neutron port has the MAC"):
        find_vm_port(neutron, "", "fa:16:3e:ff:ff:ff", "eth0")  # type: ignore[arg-type]
    with pytest.raises(NestedSetupError, match="parent_port"):
        find_vm_port(neutron, "nope", None, "")  # type: ignore[arg-type]


def test_start_up_refuses_a_vm_port_that_is_down_or_has_no_trunk():
    neutron = TrunkNeutron()
    down = dataclasses.replace(VM, status="DOWN")
    with pytest.raises(NestedSetupError, match="is DOWN"):
        nested_placement("nested-vlan", "vm1", neutron, down)  # type: ignore[arg-type]
    lonely = dataclasses.replace(VM, id="vm-without-trunk")
    with pytest.raises(NestedSetupError, match="openstack network trunk create"):
        nested_placement("nested-vlan", "vm1", neutron, lonely)  # type: ignore[arg-type]
    assert isinstance(nested_placement("nested-macvlan", "vm1", neutron, lonely),  # type: ignore[arg-type]
                      AddressPairs)


def test_start_up_waits_for_a_vm_port_neutron_shows_down_for_a_moment():
    """Neutron's VM port status lags OVN's by up to half a minute after address
    pair changes: a restarting Kuryr reads it again before refusing."""
    reads = iter([dataclasses.replace(VM, status="DOWN")] * 3 + [VM])
    slept: list[float] = []
    now = [0.0]

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        now[0] += seconds

    assert vm_port_once_active(lambda: next(reads), 45, sleep, lambda: now[0]) == VM
    assert slept == [2.0, 2.0, 2.0]
    always_down = dataclasses.replace(VM, status="DOWN")
    now[0] = 0.0
    port = vm_port_once_active(lambda: always_down, 10, sleep, lambda: now[0])
    assert port.status == "DOWN"  # nested_placement then names it
    assert now[0] >= 10


def test_an_address_handed_out_again_gets_its_pair_though_a_stale_copy_listed_it():
    """Neutron hands a freed address out again: the remembered VM port may still
    list it from the container that had it before; its pair must be written."""
    neutron = TrunkNeutron()
    pairs = AddressPairs("vm1", VM, neutron)
    pairs.attach([port(1)])
    stale = neutron.vm  # lists 192.168.250.101
    pairs.detach([port(1)])
    pairs._latest = stale
    pairs.attach([port(1)])  # the same address, a new container
    assert {ip for ip, _ in neutron.vm.allowed_address_pairs} == {"192.168.250.101"}


def test_concurrent_starts_lose_no_pair_where_neutrons_if_match_does_not_serialize():
    """Neutron 29 let 8 of 10 concurrent PUTs with the same If-Match revision
    succeed: Kuryr must not rely on it against its own concurrent writers."""
    import time

    neutron = TrunkNeutron()
    racy_update = neutron.update_port

    def update_port(port_id, **attrs):
        # Neutron's check and write are not one step: writers that checked the same
        # revision all write.
        revision = neutron.vm.revision_number
        time.sleep(0.01)
        if attrs.get("if_revision") not in (None, revision):
            raise errors.StaleRevision("412")
        attrs["if_revision"] = None
        neutron.vm = dataclasses.replace(neutron.vm, revision_number=revision)
        return racy_update(port_id, **attrs)
    neutron.update_port = update_port
    pairs = AddressPairs("vm1", VM, neutron)
    with ThreadPoolExecutor(10) as pool:
        list(pool.map(lambda n: pairs.attach([port(n)]), range(10)))
    assert sorted(ip for ip, _ in neutron.vm.allowed_address_pairs) == sorted(
        f"192.168.250.{100 + n}" for n in range(10))
    assert neutron.puts < 10


def test_a_failed_owner_write_leaves_the_subport_on_the_trunk_and_its_vlan_taken():
    neutron = TrunkNeutron()
    trunk = TrunkSubports("vm1", VM, neutron.trunk, neutron)

    def refuse(port_id, **attrs):
        raise errors.Conflict("port changed")
    neutron.update_port = refuse
    trunk.attach([port(1)])  # on the trunk all the same
    assert vlans(neutron) == [1]
    assert trunk.vlan_of(port(1).id) == 1

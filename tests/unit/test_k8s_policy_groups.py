"""The diff between a policy's desired rules and its group's existing ones."""

from kuryr.k8s.policy import Rule
from kuryr.k8s.policy_groups import group_name, rule_body, rule_changes
from kuryr.neutron.types import SecurityGroupRule


def existing(rule_id, direction, ethertype="IPv4", **kw):
    return SecurityGroupRule(rule_id, "sg", direction, ethertype, **kw)


def test_a_new_group_loses_neutrons_default_egress_rules_and_gets_the_policys():
    desired = {Rule("ingress", "IPv4", "tcp", 80, 80, remote_address_group="ingress-0")}
    changes = rule_changes(desired, [existing("e4", "egress"), existing("e6", "egress", "IPv6")],
                           {"ingress-0": "ag-1"})
    assert changes.create == list(desired)
    assert sorted(changes.delete) == ["e4", "e6"]


def test_nothing_to_do_when_the_rules_match():
    desired = {Rule("ingress", "IPv4", "tcp", 80, 80, remote_address_group="ingress-0"),
               Rule("egress", "IPv4", remote_ip_prefix="10.0.0.0/24")}
    rules = [existing("a", "ingress", protocol="tcp", port_range_min=80, port_range_max=80,
                      remote_address_group_id="ag-1"),
             existing("b", "egress", remote_ip_prefix="10.0.0.0/24")]
    changes = rule_changes(desired, rules, {"ingress-0": "ag-1"})
    assert changes.create == []
    assert changes.delete == []


def test_duplicates_foreign_remotes_and_unknown_address_groups_are_deleted():
    desired = {Rule("ingress", "IPv4", remote_address_group="ingress-0")}
    rules = [existing("a", "ingress", remote_address_group_id="ag-1"),
             existing("dup", "ingress", remote_address_group_id="ag-1"),
             existing("other-ag", "ingress", remote_address_group_id="ag-old"),
             existing("rg", "ingress", remote_group_id="sg-x")]
    changes = rule_changes(desired, rules, {"ingress-0": "ag-1"})
    assert changes.create == []
    assert sorted(changes.delete) == ["dup", "other-ag", "rg"]


def test_a_peer_set_whose_group_changed_gets_its_rule_again():
    desired = {Rule("ingress", "IPv4", remote_address_group="ingress-0")}
    changes = rule_changes(desired, [existing("a", "ingress", remote_address_group_id="ag-1")],
                           {"ingress-0": "ag-2"})
    assert changes.create == list(desired)
    assert changes.delete == ["a"]


def test_rule_body_names_the_address_group_by_id_and_leaves_out_anys():
    body = rule_body(Rule("egress", "IPv6", "udp", 53, 53, remote_address_group="egress-1"),
                     "sg-1", {"egress-1": "ag-9"})
    assert body == {"security_group_id": "sg-1", "direction": "egress", "ethertype": "IPv6",
                    "protocol": "udp", "port_range_min": 53, "port_range_max": 53,
                    "remote_address_group_id": "ag-9"}
    assert rule_body(Rule("ingress", "IPv4"), "sg-1", {}) == {
        "security_group_id": "sg-1", "direction": "ingress", "ethertype": "IPv4"}


def test_group_names_are_cut_to_neutrons_limit():
    assert group_name("default", "web") == "kuryr-np-default-web"
    assert len(group_name("n" * 63, "p" * 253)) == 255


def test_rules_with_and_without_ports_and_remotes_are_created_in_a_stable_order():
    # Found on the live cluster: sorting rules whose fields mix None and values.
    desired = [Rule("ingress", "IPv4", "tcp", 5432, 5432, remote_ip_prefix="172.17.0.0/24"),
               Rule("ingress", "IPv4", "tcp", 5432, 5432, remote_address_group="ingress-0"),
               Rule("ingress", "IPv4", remote_ip_prefix="192.0.2.1/32"),
               Rule("ingress", "IPv6")]
    first = rule_changes(desired, [], {"ingress-0": "ag-1"}).create
    assert sorted(first, key=repr) == sorted(desired, key=repr)
    assert rule_changes(list(reversed(desired)), [], {"ingress-0": "ag-1"}).create == first


def test_a_pod_whose_port_is_not_recorded_yet_is_retried_not_left_open():
    """The CNI daemon records a pod on its port in the background: a pod event
    can come first.  Its port, still pool-owned, must not be skipped (the pod
    would keep the pool's groups, its NetworkPolicy unenforced)."""
    import pytest

    from kuryr.k8s.events import NotReady
    from kuryr.k8s.policy import OpenGroups
    from kuryr.k8s.policy_groups import GROUP_ANNOTATION, ClusterView, PolicyGroups
    from kuryr.k8s.watch import Store
    from kuryr.neutron import marks

    from .fakes import FakeNeutron

    neutron = FakeNeutron()
    net = neutron.add_network("pods")
    neutron.add_subnet(net.id, "10.70.0.0/24", "10.70.0.1")
    port = neutron.add_port(net.id, "10.70.0.5", device_owner=marks.K8S_POOL_DEVICE_OWNER,
                            security_group_ids=("sg-default",))
    view = ClusterView(Store("Namespace"), Store("Pod"), Store("NetworkPolicy"))
    view.pods.put({"metadata": {"namespace": "ns", "name": "web", "uid": "u1"},
                   "status": {"podIP": "10.70.0.5"}})
    view.policies.put({"metadata": {"namespace": "ns", "name": "deny", "uid": "p1",
                                    "annotations": {GROUP_ANNOTATION: "sg-deny"}},
                       "spec": {"podSelector": {}, "policyTypes": ["Ingress"]}})
    groups = PolicyGroups(neutron, kube=None, view=view, default_groups=["sg-default"],
                          always_allowed_ingress=[])
    groups._open = OpenGroups(ingress="sg-open-in", egress="sg-open-out")
    with pytest.raises(NotReady, match="web"):
        groups.update_ports_in("ns")
    assert neutron.ports_[port.id].security_group_ids == ("sg-default",)
    # The record lands (the daemon's background PUT): the retry applies the policy.
    neutron.update_port(port.id, device_owner=marks.K8S_DEVICE_OWNER, device_id="u1")
    groups.update_ports_in("ns")
    assert neutron.ports_[port.id].security_group_ids == ("sg-deny", "sg-open-out")

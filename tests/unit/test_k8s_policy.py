"""NetworkPolicy -> security group rules, checked against the examples of the
Kubernetes documentation (concepts/services-networking/network-policies)."""

import pytest
import yaml

from kuryr.k8s.policy import (
    OpenGroups,
    PodInfo,
    Rule,
    cidrs_except,
    groups_for_pod,
    pod_info,
    policy_types,
    rules_for_policy,
    selector_matches,
)

NAMESPACES = {
    "default": {},
    "myproject": {"project": "myproject"},
    "other": {"project": "other"},
}
PODS = [
    PodInfo("default", "db", "uid-db", {"role": "db"}, ("10.0.1.5",)),
    PodInfo("default", "web", "uid-web", {"role": "frontend"}, ("10.0.1.6",)),
    PodInfo("default", "client", "uid-client", {"role": "client"}, ("10.0.1.7",)),
    PodInfo("myproject", "api", "uid-api", {"role": "frontend"}, ("10.0.2.5",)),
    PodInfo("myproject", "batch", "uid-batch", {"role": "batch"}, ("10.0.2.6",)),
    PodInfo("other", "front", "uid-other-front", {"role": "frontend"}, ("10.0.3.5",)),
]


def policy(text):
    return yaml.safe_load(text)


def compute(text, pods=PODS, always=()):
    return rules_for_policy(policy(text), NAMESPACES, pods, always)


def ingress(**kw):
    return Rule("ingress", kw.pop("ethertype", "IPv4"), **kw)


def egress(**kw):
    return Rule("egress", kw.pop("ethertype", "IPv4"), **kw)


DOCS_EXAMPLE = """
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: test-network-policy
  namespace: default
spec:
  podSelector:
    matchLabels:
      role: db
  policyTypes:
  - Ingress
  - Egress
  ingress:
  - from:
    - ipBlock:
        cidr: 172.17.0.0/16
        except:
        - 172.17.1.0/24
    - namespaceSelector:
        matchLabels:
          project: myproject
    - podSelector:
        matchLabels:
          role: frontend
    ports:
    - protocol: TCP
      port: 6379
  egress:
  - to:
    - ipBlock:
        cidr: 10.0.0.0/24
    ports:
    - protocol: TCP
      port: 5978
"""


def test_the_documentations_example():
    result = compute(DOCS_EXAMPLE)
    assert result.selected == {"uid-db"}
    assert result.types == {"Ingress", "Egress"}
    tcp6379 = {"protocol": "tcp", "port_range_min": 6379, "port_range_max": 6379}
    holes = cidrs_except("172.17.0.0/16", ["172.17.1.0/24"])
    assert result.rules == {
        *(ingress(remote_ip_prefix=cidr, **tcp6379) for cidr in holes),
        ingress(remote_address_group="ingress-0", **tcp6379),
        egress(protocol="tcp", port_range_min=5978, port_range_max=5978,
               remote_ip_prefix="10.0.0.0/24"),
    }
    # Every pod of namespace myproject, and frontends of the policy's own namespace.
    assert result.address_groups == {
        "ingress-0": {"10.0.2.5/32", "10.0.2.6/32", "10.0.1.6/32"}}


def test_ipblock_except_is_the_set_difference():
    holes = cidrs_except("172.17.0.0/16", ["172.17.1.0/24"])
    assert "172.17.1.0/24" not in holes
    assert len(holes) == 8  # /24 out of a /16: one CIDR per bit between them
    covered = {ip for cidr in holes for ip in __import__("ipaddress").ip_network(cidr)}
    assert len(covered) == 65536 - 256
    assert cidrs_except("10.0.0.0/24", ["10.0.0.0/16"]) == []
    assert cidrs_except("10.0.0.0/24", ["192.168.0.0/24"]) == ["10.0.0.0/24"]
    assert cidrs_except("10.0.0.0/24", ["10.0.0.0/25", "10.0.0.128/26"]) == ["10.0.0.192/26"]


def test_default_deny_ingress():
    result = compute("""
metadata: {name: default-deny-ingress, namespace: default}
spec:
  podSelector: {}
  policyTypes: [Ingress]
""")
    assert result.selected == {"uid-db", "uid-web", "uid-client"}
    assert result.rules == set()
    assert result.types == {"Ingress"}


def test_default_deny_ingress_still_lets_the_hosts_probes_in():
    result = compute("""
metadata: {name: default-deny-ingress, namespace: default}
spec: {podSelector: {}, policyTypes: [Ingress]}
""", always=["10.0.0.2/32"])
    assert result.rules == {ingress(remote_ip_prefix="10.0.0.2/32")}


def test_the_probe_address_is_not_added_to_an_egress_only_policy():
    result = compute("""
metadata: {name: default-deny-egress, namespace: default}
spec: {podSelector: {}, policyTypes: [Egress]}
""", always=["10.0.0.2/32"])
    assert result.rules == set()
    assert result.types == {"Egress"}


def test_allow_all_ingress():
    result = compute("""
metadata: {name: allow-all-ingress, namespace: default}
spec:
  podSelector: {}
  ingress:
  - {}
  policyTypes: [Ingress]
""")
    assert result.rules == {ingress(), ingress(ethertype="IPv6")}


def test_allow_all_egress():
    result = compute("""
metadata: {name: allow-all-egress, namespace: default}
spec:
  podSelector: {}
  egress:
  - {}
  policyTypes: [Egress]
""")
    assert result.rules == {egress(), egress(ethertype="IPv6")}
    assert result.types == {"Egress"}


def test_default_deny_all():
    result = compute("""
metadata: {name: default-deny-all, namespace: default}
spec:
  podSelector: {}
  policyTypes: [Ingress, Egress]
""")
    assert result.rules == set()
    assert result.types == {"Ingress", "Egress"}


def test_policy_types_default_to_ingress_plus_egress_when_egress_rules_exist():
    assert policy_types({"podSelector": {}}) == {"Ingress"}
    assert policy_types({"ingress": [{}]}) == {"Ingress"}
    assert policy_types({"egress": [{}]}) == {"Ingress", "Egress"}
    assert policy_types({"egress": [{}], "policyTypes": ["Egress"]}) == {"Egress"}


def test_egress_rules_without_egress_type_are_ignored():
    result = compute("""
metadata: {name: p, namespace: default}
spec:
  podSelector: {}
  policyTypes: [Ingress]
  egress: [{}]
""")
    assert result.rules == set()


def test_allow_from_label_in_the_policys_namespace_only():
    result = compute("""
metadata: {name: allow-frontend, namespace: default}
spec:
  podSelector: {matchLabels: {role: db}}
  ingress:
  - from:
    - podSelector: {matchLabels: {role: frontend}}
""")
    assert result.rules == {ingress(remote_address_group="ingress-0")}
    # Not myproject's or other's frontends: a podSelector alone is the policy's namespace.
    assert result.address_groups == {"ingress-0": {"10.0.1.6/32"}}


def test_namespace_selector_alone_means_every_pod_of_those_namespaces():
    result = compute("""
metadata: {name: allow-project, namespace: default}
spec:
  podSelector: {matchLabels: {role: db}}
  ingress:
  - from:
    - namespaceSelector: {matchLabels: {project: myproject}}
""")
    assert result.address_groups == {"ingress-0": {"10.0.2.5/32", "10.0.2.6/32"}}


def test_namespace_and_pod_selector_in_one_element_is_an_and():
    result = compute("""
metadata: {name: and, namespace: default}
spec:
  podSelector: {matchLabels: {role: db}}
  ingress:
  - from:
    - namespaceSelector: {matchLabels: {project: myproject}}
      podSelector: {matchLabels: {role: frontend}}
""")
    assert result.address_groups == {"ingress-0": {"10.0.2.5/32"}}


def test_namespace_and_pod_selector_as_two_elements_is_an_or():
    result = compute("""
metadata: {name: or, namespace: default}
spec:
  podSelector: {matchLabels: {role: db}}
  ingress:
  - from:
    - namespaceSelector: {matchLabels: {project: myproject}}
    - podSelector: {matchLabels: {role: frontend}}
""")
    assert result.address_groups == {"ingress-0": {"10.0.2.5/32", "10.0.2.6/32",
                                                   "10.0.1.6/32"}}


def test_an_empty_namespace_selector_means_every_namespace():
    result = compute("""
metadata: {name: all-frontends, namespace: default}
spec:
  podSelector: {matchLabels: {role: db}}
  ingress:
  - from:
    - namespaceSelector: {}
      podSelector: {matchLabels: {role: frontend}}
""")
    assert result.address_groups == {"ingress-0": {"10.0.1.6/32", "10.0.2.5/32",
                                                   "10.0.3.5/32"}}


def test_each_entry_has_its_own_peer_set_and_ports():
    result = compute("""
metadata: {name: two, namespace: default}
spec:
  podSelector: {matchLabels: {role: db}}
  ingress:
  - from: [{podSelector: {matchLabels: {role: frontend}}}]
    ports: [{port: 5432}]
  - from: [{podSelector: {matchLabels: {role: client}}}]
    ports: [{protocol: UDP, port: 53}, {protocol: SCTP}]
""")
    assert result.rules == {
        ingress(protocol="tcp", port_range_min=5432, port_range_max=5432,
                remote_address_group="ingress-0"),
        ingress(protocol="udp", port_range_min=53, port_range_max=53,
                remote_address_group="ingress-1"),
        ingress(protocol="sctp", remote_address_group="ingress-1"),
    }
    assert result.address_groups == {"ingress-0": {"10.0.1.6/32"},
                                     "ingress-1": {"10.0.1.7/32"}}


def test_a_peer_set_matching_no_pod_is_an_empty_group_with_the_same_rules():
    text = """
metadata: {name: p, namespace: default}
spec:
  podSelector: {matchLabels: {role: db}}
  ingress: [{from: [{podSelector: {matchLabels: {role: nobody}}}]}]
"""
    result = compute(text)
    assert result.address_groups == {"ingress-0": frozenset()}
    assert result.rules == {ingress(remote_address_group="ingress-0")}
    # A pod appearing changes the group only, not the rules.
    newcomer = PodInfo("default", "n", "uid-n", {"role": "nobody"}, ("10.0.1.9",))
    later = compute(text, [*PODS, newcomer])
    assert later.rules == result.rules
    assert later.address_groups == {"ingress-0": {"10.0.1.9/32"}}


def test_ipv6_peers_add_ipv6_rules():
    pods = [*PODS, PodInfo("default", "v6", "uid-v6", {"role": "frontend"}, ("fd00::5",))]
    result = compute("""
metadata: {name: p, namespace: default}
spec:
  podSelector: {matchLabels: {role: db}}
  ingress: [{from: [{podSelector: {matchLabels: {role: frontend}}}]}]
""", pods)
    assert result.rules == {ingress(remote_address_group="ingress-0"),
                            ingress(ethertype="IPv6", remote_address_group="ingress-0")}
    assert result.address_groups["ingress-0"] == {"10.0.1.6/32", "fd00::5/128"}


def test_egress_with_ports_to_a_cidr():
    result = compute("""
metadata: {name: multi-port-egress, namespace: default}
spec:
  podSelector: {matchLabels: {role: db}}
  policyTypes: [Egress]
  egress:
  - to:
    - ipBlock: {cidr: 10.0.0.0/24}
    ports:
    - protocol: TCP
      port: 32000
      endPort: 32768
""")
    assert result.rules == {egress(protocol="tcp", port_range_min=32000,
                                   port_range_max=32768, remote_ip_prefix="10.0.0.0/24")}


def test_egress_to_any_on_one_port():
    result = compute("""
metadata: {name: dns, namespace: default}
spec:
  podSelector: {}
  policyTypes: [Egress]
  egress: [{ports: [{protocol: UDP, port: 53}]}]
""")
    assert result.rules == {
        egress(protocol="udp", port_range_min=53, port_range_max=53),
        egress(ethertype="IPv6", protocol="udp", port_range_min=53, port_range_max=53)}


def _pod_with_ports(name, uid, role, ip, ports):
    return pod_info({
        "metadata": {"namespace": "default", "name": name, "uid": uid,
                     "labels": {"role": role}},
        "spec": {"containers": [{"name": "c", "ports": ports}]},
        "status": {"podIP": ip, "podIPs": [{"ip": ip}]},
    })


def test_named_ports_resolve_through_the_selected_pods_for_ingress():
    pods = [*PODS,
            _pod_with_ports("db2", "uid-db2", "db", "10.0.1.8",
                            [{"name": "pg", "containerPort": 5432},
                             {"name": "pg", "containerPort": 5433, "protocol": "UDP"}]),
            _pod_with_ports("web2", "uid-web2", "frontend", "10.0.1.10",
                            [{"name": "pg", "containerPort": 9999}])]
    result = compute("""
metadata: {name: named, namespace: default}
spec:
  podSelector: {matchLabels: {role: db}}
  ingress:
  - ports: [{port: pg}, {port: missing}]
""", pods)
    # TCP "pg" of the db pods only (not the UDP one, not the frontend's); "missing" skipped.
    assert result.rules == {
        ingress(protocol="tcp", port_range_min=5432, port_range_max=5432),
        ingress(ethertype="IPv6", protocol="tcp", port_range_min=5432, port_range_max=5432)}


def test_named_ports_resolve_through_the_peer_pods_for_egress():
    pods = [*PODS, _pod_with_ports("web2", "uid-web2", "frontend", "10.0.1.10",
                                   [{"name": "http", "containerPort": 8080}])]
    result = compute("""
metadata: {name: named-egress, namespace: default}
spec:
  podSelector: {matchLabels: {role: db}}
  policyTypes: [Egress]
  egress:
  - to: [{podSelector: {matchLabels: {role: frontend}}}]
    ports: [{port: http}]
""", pods)
    assert result.rules == {egress(protocol="tcp", port_range_min=8080, port_range_max=8080,
                                   remote_address_group="egress-0")}


def test_a_named_port_nobody_has_allows_nothing():
    result = compute("""
metadata: {name: p, namespace: default}
spec:
  podSelector: {matchLabels: {role: db}}
  ingress: [{ports: [{port: nope}]}]
""")
    assert result.rules == set()


@pytest.mark.parametrize(("selector", "expected"), [
    ({}, True),
    ({"matchLabels": {"role": "db"}}, True),
    ({"matchLabels": {"role": "web"}}, False),
    ({"matchExpressions": [{"key": "role", "operator": "In", "values": ["db", "x"]}]}, True),
    ({"matchExpressions": [{"key": "role", "operator": "NotIn", "values": ["db"]}]}, False),
    ({"matchExpressions": [{"key": "tier", "operator": "NotIn", "values": ["a"]}]}, True),
    ({"matchExpressions": [{"key": "role", "operator": "Exists"}]}, True),
    ({"matchExpressions": [{"key": "role", "operator": "DoesNotExist"}]}, False),
    ({"matchLabels": {"role": "db"},
      "matchExpressions": [{"key": "env", "operator": "Exists"}]}, False),
])
def test_label_selectors(selector, expected):
    assert selector_matches(selector, {"role": "db"}) is expected


def test_pod_info_reads_ips_labels_and_named_ports():
    info = _pod_with_ports("w", "u", "frontend", "10.0.0.9",
                           [{"name": "http", "containerPort": 80}, {"containerPort": 81}])
    assert info.uid == "u"
    assert info.ips == ("10.0.0.9",)
    assert info.labels == {"role": "frontend"}
    assert [(p.name, p.protocol, p.number) for p in info.named_ports] == [("http", "TCP", 80)]


OPEN = OpenGroups(ingress="open-in", egress="open-out")


def _policy_rules(selected, types):
    from kuryr.k8s.policy import PolicyRules
    return PolicyRules(frozenset(), {}, frozenset(selected), frozenset(types))


def test_a_pod_no_policy_selects_keeps_the_default_groups():
    policies = [(_policy_rules({"a"}, {"Ingress"}), "sg-1")]
    assert groups_for_pod("b", policies, ["default"], OPEN) == ["default"]


def test_a_selected_pod_gets_the_union_of_its_policies_and_opens_what_none_isolates():
    policies = [(_policy_rules({"a"}, {"Ingress"}), "sg-1"),
                (_policy_rules({"a", "b"}, {"Ingress"}), "sg-2"),
                (_policy_rules({"b"}, {"Egress"}), "sg-3")]
    assert groups_for_pod("a", policies, ["default"], OPEN) == ["open-out", "sg-1", "sg-2"]
    # b: ingress isolated by sg-2, egress by sg-3: nothing opened, no default group.
    assert groups_for_pod("b", policies, ["default"], OPEN) == ["sg-2", "sg-3"]
    policies_egress_only = [(_policy_rules({"c"}, {"Egress"}), "sg-4")]
    assert groups_for_pod("c", policies_egress_only, ["default"], OPEN) == ["open-in", "sg-4"]

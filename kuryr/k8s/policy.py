"""Kubernetes NetworkPolicy -> Neutron security group rules, as pure functions.

One security group per NetworkPolicy carries the rules that policy allows.
Kubernetes unions the allows of every policy selecting a pod, and Neutron
unions the rules of every group on a port, so a pod's port gets exactly the
groups of the policies selecting it (:func:`groups_for_pod`).  A direction no
selecting policy isolates (a policy of type Ingress only says nothing about
egress) is opened by one shared group per direction; a pod no policy selects
keeps the default groups.

Peers chosen by selectors (podSelector, namespaceSelector, both) become one
Neutron *address group* per ingress/egress entry, holding the peer pods' IPs:
the rules name the group (remote_address_group_id), so a pod starting,
stopping or changing labels updates one address group instead of deleting and
creating rules on every policy group (rules stay as they are while the peer
set changes).  ipBlock peers are static prefixes (remote_ip_prefix), with
``except`` expanded into the set difference of CIDRs.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from kuryr.k8s.events import Obj, labels, metadata

LOG = logging.getLogger(__name__)

INGRESS = "ingress"
EGRESS = "egress"
IPV4 = "IPv4"
IPV6 = "IPv6"
ETHERTYPES = (IPV4, IPV6)
DEFAULT_PROTOCOL = "TCP"


@dataclass(frozen=True)
class NamedPort:
    name: str
    protocol: str  # "TCP", "UDP", "SCTP"
    number: int


@dataclass(frozen=True)
class PodInfo:
    """What policy needs to know of a pod."""

    namespace: str
    name: str
    uid: str
    labels: Mapping[str, str] = field(default_factory=dict, hash=False)
    ips: tuple[str, ...] = ()
    named_ports: tuple[NamedPort, ...] = ()


@dataclass(frozen=True)
class Rule:
    """One Neutron security group rule; None: any."""

    direction: str
    ethertype: str
    protocol: str | None = None  # lower case, as Neutron stores it
    port_range_min: int | None = None
    port_range_max: int | None = None
    remote_ip_prefix: str | None = None
    # The name of a peer set of PolicyRules.address_groups; the applier maps
    # it to the id of the Neutron address group holding that set.
    remote_address_group: str | None = None


@dataclass(frozen=True)
class PolicyRules:
    """Everything one NetworkPolicy asks of Neutron."""

    rules: frozenset[Rule]
    address_groups: Mapping[str, frozenset[str]]  # peer-set name -> CIDRs of its pods
    selected: frozenset[str]  # uids of the pods the policy applies to
    types: frozenset[str]  # "Ingress", "Egress": the directions it isolates


# -- reading objects ---------------------------------------------------------
def pod_info(obj: Obj) -> PodInfo:
    meta = metadata(obj)
    status = obj.get("status") or {}
    ips = [str(i.get("ip")) for i in status.get("podIPs") or () if i.get("ip")]
    if not ips and status.get("podIP"):
        ips = [str(status["podIP"])]
    ports = tuple(
        NamedPort(str(port["name"]), str(port.get("protocol") or DEFAULT_PROTOCOL),
                  int(port["containerPort"]))
        for container in (obj.get("spec") or {}).get("containers") or ()
        for port in container.get("ports") or () if port.get("name"))
    return PodInfo(namespace=str(meta.get("namespace") or ""), name=str(meta.get("name") or ""),
                   uid=str(meta.get("uid") or ""), labels=labels(obj), ips=tuple(ips),
                   named_ports=ports)


def namespace_labels(namespaces: Iterable[Obj]) -> dict[str, dict[str, str]]:
    """Namespace name -> its labels (with kubernetes.io/metadata.name only when
    the API server set it: 1.20 does not)."""
    return {str(metadata(ns).get("name")): labels(ns) for ns in namespaces}


# -- selectors ---------------------------------------------------------------
def selector_matches(selector: Mapping[str, Any] | None, found: Mapping[str, str]) -> bool:
    """A LabelSelector (matchLabels AND matchExpressions); {} matches everything."""
    selector = selector or {}
    for key, value in (selector.get("matchLabels") or {}).items():
        if found.get(key) != value:
            return False
    return all(_expression_matches(expr, found)
               for expr in selector.get("matchExpressions") or ())


def _expression_matches(expr: Mapping[str, Any], found: Mapping[str, str]) -> bool:
    key, operator, values = expr["key"], expr["operator"], set(expr.get("values") or ())
    if operator == "In":
        return key in found and found[key] in values
    if operator == "NotIn":
        return key not in found or found[key] not in values
    if operator == "Exists":
        return key in found
    if operator == "DoesNotExist":
        return key not in found
    raise ValueError(f"unknown label selector operator {operator!r}")


def selected_pods(policy: Obj, pods: Iterable[PodInfo]) -> list[PodInfo]:
    """The pods the policy applies to: its namespace's, matching spec.podSelector."""
    namespace = metadata(policy).get("namespace")
    selector = (policy.get("spec") or {}).get("podSelector")
    return [p for p in pods if p.namespace == namespace and selector_matches(selector, p.labels)]


def peer_pods(peer: Mapping[str, Any], policy_namespace: str,
              namespaces: Mapping[str, Mapping[str, str]],
              pods: Iterable[PodInfo]) -> list[PodInfo]:
    """The pods a from/to entry with podSelector and/or namespaceSelector names."""
    if "namespaceSelector" in peer:
        chosen = {name for name, found in namespaces.items()
                  if selector_matches(peer["namespaceSelector"], found)}
    else:
        chosen = {policy_namespace}
    pod_selector = peer.get("podSelector")  # absent with a namespaceSelector: all pods
    return [p for p in pods
            if p.namespace in chosen and selector_matches(pod_selector, p.labels)]


# -- policy types and addresses ----------------------------------------------
def policy_types(spec: Mapping[str, Any]) -> frozenset[str]:
    """spec.policyTypes, or the API's default: Ingress always, Egress when the
    policy has egress rules."""
    given = spec.get("policyTypes")
    if given:
        return frozenset(str(t) for t in given)
    return frozenset({"Ingress", *(["Egress"] if spec.get("egress") else [])})


def cidrs_except(cidr: str, excepted: Iterable[str]) -> list[str]:
    """``cidr`` without the ``excepted`` ones, as the fewest CIDRs."""
    # Both sides of every comparison are of one IP version (checked first);
    # Any because the ipaddress stubs cannot express that.
    remaining: list[Any] = [ipaddress.ip_network(cidr, strict=False)]
    for text in excepted:
        hole: Any = ipaddress.ip_network(text, strict=False)
        kept: list[Any] = []
        for net in remaining:
            if net.version != hole.version or not net.overlaps(hole):
                kept.append(net)
            elif not hole.supernet_of(net):
                kept.extend(net.address_exclude(hole))
        remaining = kept
    return [str(net) for net in sorted(remaining, key=lambda n: (n.version, n))]


def _ethertype(cidr: str) -> str:
    return IPV4 if ipaddress.ip_network(cidr, strict=False).version == 4 else IPV6  # noqa: PLR2004


def host_cidr(ip: str) -> str:
    return str(ipaddress.ip_network(ip))


# -- ports -------------------------------------------------------------------
@dataclass(frozen=True)
class PortRange:
    protocol: str | None  # None: every protocol (an entry without ports)
    low: int | None = None
    high: int | None = None


ALL_PORTS = PortRange(None)


def port_ranges(ports: list[Mapping[str, Any]] | None, owners: Iterable[PodInfo],
                where: str) -> list[PortRange]:
    """An entry's ports; named ports resolved through ``owners``' container
    ports (a name no owner has is skipped, with a log: it allows nothing)."""
    if not ports:
        return [ALL_PORTS]
    owners = list(owners)
    ranges: list[PortRange] = []
    for port in ports:
        protocol = str(port.get("protocol") or DEFAULT_PROTOCOL)
        number = port.get("port")
        if number is None:
            ranges.append(PortRange(protocol))
        elif isinstance(number, int) or str(number).isdigit():
            high = port.get("endPort")
            ranges.append(PortRange(protocol, int(number), int(high or number)))
        else:
            found = sorted({n.number for pod in owners for n in pod.named_ports
                            if n.name == number and n.protocol == protocol})
            if not found:
                LOG.info("%s: named port %s/%s matches no container port: skipped",
                         where, protocol, number)
            ranges.extend(PortRange(protocol, n, n) for n in found)
    return ranges


# -- rules -------------------------------------------------------------------
def _rules(direction: str, ranges: list[PortRange], ethertype: str, *,
           prefix: str | None = None, group: str | None = None) -> set[Rule]:
    return {Rule(direction, ethertype,
                 r.protocol.lower() if r.protocol else None, r.low, r.high,
                 remote_ip_prefix=prefix, remote_address_group=group)
            for r in ranges}


def open_rules(direction: str) -> frozenset[Rule]:
    """Everything allowed in one direction (both IP versions)."""
    return frozenset(Rule(direction, ethertype) for ethertype in ETHERTYPES)


def address_group_name(direction: str, index: int) -> str:
    """The peer set of the policy's ``index``-th ingress or egress entry."""
    return f"{direction}-{index}"


def rules_for_policy(policy: Obj, namespaces: Mapping[str, Mapping[str, str]],
                     pods: Iterable[PodInfo],
                     always_allowed_ingress: Iterable[str] = ()) -> PolicyRules:
    """The rules of the policy's security group and its peer sets.

    ``always_allowed_ingress``: CIDRs whose traffic reaches every pod even
    when a policy isolates it (the host's probe address, so kubelet's liveness
    and readiness probes work, as Kubernetes assumes)."""
    pods = list(pods)
    meta = metadata(policy)
    namespace = str(meta.get("namespace") or "")
    where = f"NetworkPolicy {namespace}/{meta.get('name')}"
    spec = policy.get("spec") or {}
    types = policy_types(spec)
    targets = selected_pods(policy, pods)
    rules: set[Rule] = set()
    groups: dict[str, frozenset[str]] = {}
    for kind, direction, peers_key in (("Ingress", INGRESS, "from"), ("Egress", EGRESS, "to")):
        if kind not in types:
            continue
        for index, entry in enumerate(spec.get(direction) or ()):
            peers = entry.get(peers_key) or []
            selector_peers = [p for p in peers if "ipBlock" not in p]
            chosen = [pod for peer in selector_peers
                      for pod in peer_pods(peer, namespace, namespaces, pods)]
            # Ingress ports are the policy's pods' ports; egress ports the
            # peers' (every known pod's when the peers are not pods).
            owners = targets if direction == INGRESS else (chosen if selector_peers else pods)
            ranges = port_ranges(entry.get("ports"), owners, where)
            if not peers:  # an empty from/to: every source or destination
                for ethertype in ETHERTYPES:
                    rules |= _rules(direction, ranges, ethertype)
                continue
            for peer in peers:
                if "ipBlock" in peer:
                    block = peer["ipBlock"]
                    for cidr in cidrs_except(block["cidr"], block.get("except") or ()):
                        rules |= _rules(direction, ranges, _ethertype(cidr), prefix=cidr)
            if selector_peers:
                name = address_group_name(direction, index)
                members = frozenset(host_cidr(ip) for pod in chosen for ip in pod.ips)
                groups[name] = members
                versions = {IPV4} | {_ethertype(m) for m in members}
                for ethertype in versions:
                    rules |= _rules(direction, ranges, ethertype, group=name)
    if "Ingress" in types:
        for cidr in always_allowed_ingress:
            rules.add(Rule(INGRESS, _ethertype(cidr), remote_ip_prefix=cidr))
    return PolicyRules(rules=frozenset(rules), address_groups=groups,
                       selected=frozenset(p.uid for p in targets), types=types)


# -- ports' groups -----------------------------------------------------------
@dataclass(frozen=True)
class OpenGroups:
    """The shared groups that open a direction no selecting policy isolates."""

    ingress: str
    egress: str


def groups_for_pod(pod_uid: str, policies: Iterable[tuple[PolicyRules, str]],
                   default_groups: Iterable[str], open_groups: OpenGroups) -> list[str]:
    """The security groups of a pod's port: its selecting policies' groups
    (plus an open group for a direction none of them isolates), or the default
    groups when no policy selects it."""
    selecting = [(rules, group_id) for rules, group_id in policies if pod_uid in rules.selected]
    if not selecting:
        return sorted(default_groups)
    chosen = {group_id for _, group_id in selecting}
    isolated = set().union(*(rules.types for rules, _ in selecting))
    if "Ingress" not in isolated:
        chosen.add(open_groups.ingress)
    if "Egress" not in isolated:
        chosen.add(open_groups.egress)
    return sorted(chosen)

"""Applies what kuryr.k8s.policy computes: a security group per NetworkPolicy,
its peer address groups, and the groups on the selected pods' ports.

State lives in the cluster and in Neutron, never only here, so a restarted
controller resumes: the NetworkPolicy carries a finalizer (its deletion waits
for the group's removal) and its group's id in an annotation; the group is
also tagged with the policy's uid, and its address groups carry the uid in
their description, so a group made just before a crash is found again.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from kuryr import errors
from kuryr.k8s.api import KubeApi, ObjectGone
from kuryr.k8s.events import NotReady, Obj, metadata
from kuryr.k8s.policy import (
    EGRESS,
    INGRESS,
    OpenGroups,
    PolicyRules,
    Rule,
    groups_for_pod,
    namespace_labels,
    open_rules,
    pod_info,
    policy_types,
    rules_for_policy,
    selected_pods,
)
from kuryr.k8s.watch import Store
from kuryr.neutron import marks
from kuryr.neutron.client import Neutron
from kuryr.neutron.types import SecurityGroupRule

LOG = logging.getLogger(__name__)

FINALIZER = "openstack.org/kuryr-networkpolicy"
GROUP_ANNOTATION = "openstack.org/kuryr-security-group"
POLICY_TAG = "kuryr.k8s.np:"  # + the policy's uid
OPEN_TAG = "kuryr.k8s.np-open:"  # + ingress / egress
NAME_LIMIT = 255


def group_name(namespace: str, name: str) -> str:
    return f"kuryr-np-{namespace}-{name}"[:NAME_LIMIT]


def address_group_description(policy_uid: str) -> str:
    return f"kuryr-np:{policy_uid}"


def address_group_full_name(policy_uid: str, peer_set: str) -> str:
    return f"kuryr-np-{policy_uid}-{peer_set}"


# -- rules: desired vs. existing (pure) --------------------------------------
def rule_as_desired(rule: SecurityGroupRule, names_by_id: Mapping[str, str]) -> Rule | None:
    """The existing rule in kuryr.k8s.policy's terms; None for one Kuryr
    would never make (a remote group, an address group not the policy's)."""
    if rule.remote_group_id:
        return None
    peer_set = None
    if rule.remote_address_group_id:
        peer_set = names_by_id.get(rule.remote_address_group_id)
        if peer_set is None:
            return None
    return Rule(rule.direction, rule.ethertype, rule.protocol, rule.port_range_min,
                rule.port_range_max, remote_ip_prefix=rule.remote_ip_prefix,
                remote_address_group=peer_set)


@dataclass(frozen=True)
class RuleChanges:
    create: list[Rule]
    delete: list[str]  # rule ids


def rule_changes(desired: Iterable[Rule], existing: Iterable[SecurityGroupRule],
                 group_ids: Mapping[str, str]) -> RuleChanges:
    """The fewest requests that turn ``existing`` into ``desired`` (duplicates
    of a desired rule are deleted too).  ``group_ids``: peer set -> address group id."""
    names_by_id = {gid: name for name, gid in group_ids.items()}
    wanted = set(desired)
    kept: set[Rule] = set()
    delete = []
    for rule in existing:
        found = rule_as_desired(rule, names_by_id)
        if found is None or found not in wanted or found in kept:
            delete.append(rule.id)
        else:
            kept.add(found)
    return RuleChanges(create=sorted(wanted - kept, key=_rule_order), delete=delete)


def _rule_order(rule: Rule) -> tuple[str, ...]:
    """A stable order of requests (None, "any", sorts first)."""
    return tuple("" if value is None else f"{value:>12}" if isinstance(value, int) else value
                 for value in vars(rule).values())


def rule_body(rule: Rule, group_id: str, group_ids: Mapping[str, str]) -> dict[str, object]:
    body: dict[str, object] = {"security_group_id": group_id, "direction": rule.direction,
                               "ethertype": rule.ethertype}
    optional = {"protocol": rule.protocol, "port_range_min": rule.port_range_min,
                "port_range_max": rule.port_range_max, "remote_ip_prefix": rule.remote_ip_prefix,
                "remote_address_group_id": (group_ids[rule.remote_address_group]
                                            if rule.remote_address_group else None)}
    body.update({key: value for key, value in optional.items() if value is not None})
    return body


# -- the applier -------------------------------------------------------------
@dataclass(frozen=True)
class ClusterView:
    """The watch caches the policy code reads."""

    namespaces: Store
    pods: Store
    policies: Store


class PolicyGroups:
    def __init__(self, neutron: Neutron, kube: KubeApi, view: ClusterView,
                 default_groups: Iterable[str], always_allowed_ingress: Iterable[str]) -> None:
        self._neutron = neutron
        self._kube = kube
        self._view = view
        self._default_groups = list(default_groups)
        self._always_allowed = list(always_allowed_ingress)
        self._open: OpenGroups | None = None

    # -- start-up ---------------------------------------------------------
    def ensure_open_groups(self) -> OpenGroups:
        """The two shared groups that open a direction (found by tag, else made)."""
        ids = {direction: self._ensure_tagged_group(
                   f"kuryr-np-open-{direction}", OPEN_TAG + direction,
                   f"Kuryr: everything {direction}, for pods no NetworkPolicy isolates so",
                   open_rules(direction))
               for direction in (INGRESS, EGRESS)}
        self._open = OpenGroups(ingress=ids[INGRESS], egress=ids[EGRESS])
        return self._open

    def _ensure_tagged_group(self, name: str, tag: str, description: str,
                             rules: Iterable[Rule]) -> str:
        found = self._neutron.security_groups_tagged([tag])
        if found:
            group_id = found[0].id
        else:
            group_id = self._neutron.create_security_group(name, description).id
            self._neutron.set_security_group_tags(group_id, [tag])
        self._sync_rules(group_id, frozenset(rules), {})
        return group_id

    # -- a policy ---------------------------------------------------------
    def apply_policy(self, policy: Obj) -> None:
        """Make Neutron match the policy (ADDED or MODIFIED, including the
        deletion request a finalizer turns into a MODIFIED)."""
        if metadata(policy).get("deletionTimestamp"):
            self.delete_policy_group(policy)
            return
        policy = self._with_finalizer(policy)
        group_id = self._ensure_policy_group(policy)
        computed = self._compute(policy)
        uid = str(metadata(policy)["uid"])
        group_ids = self._sync_address_groups(uid, computed.address_groups)
        self._sync_rules(group_id, computed.rules, group_ids)
        self._delete_address_groups_except(uid, set(computed.address_groups))
        self.update_ports_in(str(metadata(policy)["namespace"]))

    def delete_policy_group(self, policy: Obj) -> None:
        """Take the policy's group off its pods' ports, delete it and its
        address groups, then release the NetworkPolicy (its finalizer)."""
        meta = metadata(policy)
        uid = str(meta["uid"])
        groups = [g.id for g in self._neutron.security_groups_tagged([POLICY_TAG + uid])]
        self.update_ports_in(str(meta["namespace"]), leaving=uid)
        for group_id in groups:
            self._neutron.delete_security_group(group_id)
        self._delete_address_groups_except(uid, set())
        if FINALIZER in (meta.get("finalizers") or ()):
            remaining = [f for f in meta["finalizers"] if f != FINALIZER]
            # Gone already: an earlier pass released it (its namespace's deletion
            # may queue the policy's last update behind that pass).
            with contextlib.suppress(ObjectGone):
                self._kube.patch_metadata("NetworkPolicy", policy, finalizers=remaining)

    def _with_finalizer(self, policy: Obj) -> Obj:
        """Nothing is made in Neutron before the policy holds the finalizer:
        otherwise a deletion in between would leave the group behind."""
        finalizers = list(metadata(policy).get("finalizers") or ())
        if FINALIZER in finalizers:
            return policy
        return self._kube.patch_metadata("NetworkPolicy", policy,
                                         finalizers=[*finalizers, FINALIZER])

    def _ensure_policy_group(self, policy: Obj) -> str:
        meta = metadata(policy)
        uid = str(meta["uid"])
        annotated = (meta.get("annotations") or {}).get(GROUP_ANNOTATION)
        found = [g.id for g in self._neutron.security_groups_tagged([POLICY_TAG + uid])]
        if annotated in found:
            return str(annotated)
        if found:
            group_id = found[0]
        else:
            name = group_name(str(meta["namespace"]), str(meta["name"]))
            group_id = self._neutron.create_security_group(
                name, f"Kuryr: NetworkPolicy {meta['namespace']}/{meta['name']} uid {uid}").id
            self._neutron.set_security_group_tags(group_id, [POLICY_TAG + uid])
        self._kube.patch_metadata("NetworkPolicy", policy,
                                  annotations={GROUP_ANNOTATION: group_id})
        return group_id

    def _compute(self, policy: Obj) -> PolicyRules:
        pods = [pod_info(p) for p in self._view.pods.values()]
        return rules_for_policy(policy, namespace_labels(self._view.namespaces.values()),
                                pods, self._always_allowed)

    def _sync_address_groups(self, uid: str,
                             wanted: Mapping[str, frozenset[str]]) -> dict[str, str]:
        """Peer set name -> address group id, each group holding its set."""
        existing = {g.name: g for g in self._neutron.address_groups(address_group_description(uid))}
        ids = {}
        for peer_set, addresses in wanted.items():
            full_name = address_group_full_name(uid, peer_set)
            group = existing.get(full_name)
            if group is None:
                ids[peer_set] = self._neutron.create_address_group(
                    full_name, address_group_description(uid), addresses).id
                continue
            self._neutron.add_addresses(group.id, addresses - group.addresses)
            self._neutron.remove_addresses(group.id, group.addresses - addresses)
            ids[peer_set] = group.id
        return ids

    def _delete_address_groups_except(self, uid: str, kept: set[str]) -> None:
        """After the rules naming them are gone (Neutron refuses before)."""
        kept_names = {address_group_full_name(uid, name) for name in kept}
        for group in self._neutron.address_groups(address_group_description(uid)):
            if group.name not in kept_names:
                self._neutron.delete_address_group(group.id)

    def _sync_rules(self, group_id: str, desired: frozenset[Rule],
                    group_ids: Mapping[str, str]) -> None:
        changes = rule_changes(desired, self._neutron.security_group_rules(group_id), group_ids)
        self._neutron.create_security_group_rules(
            [rule_body(rule, group_id, group_ids) for rule in changes.create])
        for rule_id in changes.delete:
            self._neutron.delete_security_group_rule(rule_id)

    # -- ports ------------------------------------------------------------
    def has_policies(self, namespace: str) -> bool:
        """Whether a NetworkPolicy of ``namespace`` is known (from the watch cache)."""
        return any(metadata(p).get("namespace") == namespace for p in self._view.policies.values())

    def update_ports_in(self, namespace: str, leaving: str = "") -> None:
        """Give each pod port of the namespace the groups its policies say
        (``leaving``: the uid of a policy being deleted, no longer counted)."""
        pods = {str(metadata(p).get("uid")): p for p in self._view.pods.values()
                if metadata(p).get("namespace") == namespace}
        if not pods:
            return
        policies = self._policy_groups(namespace, leaving)
        open_groups = self._open or self.ensure_open_groups()
        by_address = {ip: uid for uid, pod in pods.items() for ip in pod_info(pod).ips}
        unrecorded = []
        for port in self._neutron.ports(device_owner=marks.K8S_OWNERS.all):
            if port.device_owner != marks.K8S_DEVICE_OWNER:
                # A pod's port whose record (device_id = uid, in the CNI daemon's
                # background) has not landed yet still looks pooled: come back, or
                # the pod would keep the pool's groups, its policies unenforced.
                unrecorded += [by_address[ip] for ip in port.addresses if ip in by_address]
                continue
            if port.device_id not in pods:
                continue
            wanted = groups_for_pod(port.device_id, policies, self._default_groups, open_groups)
            if sorted(port.security_group_ids) != wanted:
                try:
                    self._neutron.update_port(port.id, security_group_ids=wanted,
                                              if_revision=port.revision_number)
                except errors.Conflict as exc:
                    raise NotReady(f"port {port.id} changed meanwhile") from exc
        if unrecorded:
            names = sorted(pod_info(pods[uid]).name for uid in unrecorded)
            raise NotReady(f"pods {', '.join(names)} of {namespace}: their ports are "
                           "not recorded yet")

    def _policy_groups(self, namespace: str, leaving: str) -> list[tuple[PolicyRules, str]]:
        """(what each policy of the namespace selects, its group id); a policy
        with no group yet makes the caller wait for it (else its pods would
        be left open in the meantime)."""
        pods = [pod_info(p) for p in self._view.pods.values()]
        found = []
        for policy in self._view.policies.values():
            meta = metadata(policy)
            if meta.get("namespace") != namespace or meta.get("uid") == leaving:
                continue
            if meta.get("deletionTimestamp"):
                continue
            group_id = (meta.get("annotations") or {}).get(GROUP_ANNOTATION)
            if not group_id:
                raise NotReady(f"NetworkPolicy {namespace}/{meta.get('name')} has no group yet")
            selected = frozenset(p.uid for p in selected_pods(policy, pods))
            found.append((PolicyRules(frozenset(), {}, selected,
                                      policy_types(policy.get("spec") or {})), str(group_id)))
        return found

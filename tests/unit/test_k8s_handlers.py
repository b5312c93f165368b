"""The controller's routing of pod events (pure: the policy side is recorded)."""

from kuryr.k8s.controller import Handlers
from kuryr.k8s.events import Event, EventType
from kuryr.k8s.policy_groups import ClusterView
from kuryr.k8s.watch import Store


class RecordingPolicies:
    def __init__(self, namespaces_with_policies: set[str]) -> None:
        self.with_policies = namespaces_with_policies
        self.updated: list[str] = []

    def has_policies(self, namespace: str) -> bool:
        return namespace in self.with_policies

    def update_ports_in(self, namespace: str, leaving: str = "") -> None:
        self.updated.append(namespace)


def pod(namespace: str, name: str, ip: str) -> dict:
    return {"metadata": {"namespace": namespace, "name": name, "uid": f"uid-{name}",
                         "labels": {"app": name}},
            "status": {"podIP": ip}}


def test_pod_events_touch_neutron_only_in_namespaces_with_policies():
    view = ClusterView(namespaces=Store("Namespace"), pods=Store("Pod"),
                       policies=Store("NetworkPolicy"))
    policies = RecordingPolicies({"guarded"})
    handlers = Handlers(view, policies, None, lambda event: None)  # type: ignore[arg-type]
    for i in range(5):
        handlers(Event(EventType.ADDED, "Pod", pod("open", f"p{i}", f"10.0.0.{i + 1}")))
    handlers(Event(EventType.ADDED, "Pod", pod("guarded", "g", "10.0.1.1")))
    handlers(Event(EventType.ADDED, "Pod", pod("guarded", "pending", "")))  # no IP yet
    assert policies.updated == ["guarded"]

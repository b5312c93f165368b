"""The Kubernetes controller: watchers -> per-object queue -> handlers.

Built at start-up with exactly its collaborators; one object starts and
stops every thread (the queue's workers, one watcher per kind).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from kuryr.k8s.events import Event, EventType, Obj, labels, metadata
from kuryr.k8s.namespaces import NamespaceNetworks
from kuryr.k8s.nodes import NodePorts
from kuryr.k8s.policy import pod_info
from kuryr.k8s.policy_groups import ClusterView, PolicyGroups
from kuryr.k8s.queue import KeyedQueue
from kuryr.k8s.watch import Source, Store, Watcher

LOG = logging.getLogger(__name__)

KINDS = ("Namespace", "Pod", "NetworkPolicy", "Node")
HEARTBEAT_PERIOD = 10.0
LEASE_DURATION = 30  # seconds: `kuryr status` calls a controller silent longer than this down


class Handlers:
    """Routes each event to the code for its kind."""

    def __init__(self, view: ClusterView, policies: PolicyGroups,
                 networks: NamespaceNetworks | None,
                 requeue: Callable[[Event], None], nodes: NodePorts | None = None,
                 node_store: Store | None = None) -> None:
        self._view = view
        self._nodes = nodes
        self._node_store = node_store or Store("Node")
        self._policies = policies
        self._networks = networks  # None: the shared pod network driver
        self._requeue = requeue
        self._lock = threading.Lock()
        # What policy saw of each pod and namespace (labels, IPs): a change
        # re-applies the policies, a status update that changes neither does not.
        self._peer_state: dict[str, tuple[object, ...]] = {}

    def __call__(self, event: Event) -> None:
        if event.kind == "NetworkPolicy":
            self._on_policy(event)
        elif event.kind == "Pod":
            self._on_pod(event)
        elif event.kind == "Namespace":
            self._on_namespace(event)
        elif event.kind == "Node":
            self._on_node(event)

    def _on_node(self, event: Event) -> None:
        if self._nodes is None:
            return
        if event.type is EventType.DELETED:  # released: its ports went already (or
            # the finalizer was removed by hand: collect them now)
            self._nodes.delete_ports_of(str(metadata(event.obj).get("name") or ""))
            return
        # The newest version seen: a finalizer patch must name the current one.
        self._nodes.apply_node(self._node_store.get(event.key) or event.obj)

    def _on_policy(self, event: Event) -> None:
        if event.type is EventType.DELETED:
            # Our finalizer made the deletion a MODIFIED first; this one
            # comes only if the finalizer was removed by hand: clean up anyway.
            self._policies.delete_policy_group(_without_finalizers(event.obj))
            return
        # The newest version seen: a queued (or re-queued) event may be older
        # than a patch of our own, and a patch must name the current version.
        self._policies.apply_policy(self._view.policies.get(event.key) or event.obj)

    def _on_pod(self, event: Event) -> None:
        info = pod_info(event.obj)
        state = None if event.type is EventType.DELETED else (
            tuple(sorted(info.labels.items())), info.ips)
        if self._peer_state_changed(event.key, state):
            self._reapply_policies()
        # A pod no policy of its namespace can select keeps the groups its port
        # was made with: no Neutron request per pod event (a burst of pods would
        # otherwise list every pod port once per event, beside the ADDs' writes).
        if event.type is not EventType.DELETED and info.ips \
                and self._policies.has_policies(info.namespace):
            self._policies.update_ports_in(info.namespace)

    def _on_namespace(self, event: Event) -> None:
        if self._networks is not None and event.type is not EventType.DELETED:
            self._networks.apply_namespace(self._view.namespaces.get(event.key) or event.obj)
        deleted = event.type is EventType.DELETED
        state = None if deleted else tuple(sorted(labels(event.obj).items()))
        if self._peer_state_changed(event.key, state):
            self._reapply_policies()

    def _peer_state_changed(self, key: str, state: tuple[object, ...] | None) -> bool:
        with self._lock:
            before = self._peer_state.get(key)
            if state is None:
                self._peer_state.pop(key, None)
            else:
                self._peer_state[key] = state
        return before != state

    def _reapply_policies(self) -> None:
        """Through the queue, so each policy is still handled one event at a time."""
        for policy in self._view.policies.values():
            self._requeue(Event(EventType.MODIFIED, "NetworkPolicy", policy))


def _without_finalizers(obj: Obj) -> Obj:
    meta = dict(metadata(obj))
    meta["finalizers"] = []
    return {**obj, "metadata": meta}


class Heartbeat:
    """Renews the controller's Lease every ``period`` seconds (its own thread)."""

    def __init__(self, renew: Callable[[], None], period: float = HEARTBEAT_PERIOD) -> None:
        self._renew = renew
        self._period = period
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="k8s-heartbeat", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                self._renew()
            except Exception as exc:  # noqa: BLE001 - the API server may be away a while
                LOG.warning("cannot renew the controller's Lease: %s", exc)
            self._stopping.wait(self._period)

    def stop(self) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(self._period + 5)


class Controller:
    def __init__(self, source: Source, view: ClusterView, policies: PolicyGroups,
                 networks: NamespaceNetworks | None, workers: int = 4,
                 heartbeat: Heartbeat | None = None, nodes: NodePorts | None = None) -> None:
        self._policies = policies
        self._heartbeat = heartbeat
        self.queue = KeyedQueue(self._handle, workers=workers)
        node_store = Store("Node")
        self.handlers = Handlers(view, policies, networks, self.queue.put, nodes, node_store)
        stores = {"Namespace": view.namespaces, "Pod": view.pods,
                  "NetworkPolicy": view.policies, "Node": node_store}
        self.watchers = [Watcher(kind, source, stores[kind], self.queue.put) for kind in KINDS]

    def _handle(self, event: Event) -> None:
        self.handlers(event)

    def start(self) -> None:
        """Shared groups first (every port update names them), then the
        workers, then the watchers that feed them."""
        self._policies.ensure_open_groups()
        self.queue.start()
        for watcher in self.watchers:
            watcher.start()
        if self._heartbeat is not None:
            self._heartbeat.start()

    def stop(self) -> None:
        if self._heartbeat is not None:
            self._heartbeat.stop()
        for watcher in self.watchers:
            watcher.stop()
        self.queue.stop()

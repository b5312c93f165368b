"""The Kubernetes controller: watchers -> per-object queue -> handlers.

Built at start-up with exactly its collaborators; one object starts and
stops every thread (the queue's workers, one watcher per kind).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from kuryr.k8s.events import Event, EventType, Obj, labels, metadata
from kuryr.k8s.namespaces import NamespaceNetworks
from kuryr.k8s.nodes import NodePorts
from kuryr.k8s.policy import pod_info
from kuryr.k8s.policy_groups import ClusterView, PolicyGroups
from kuryr.k8s.queue import KeyedQueue, RetryPolicy
from kuryr.k8s.services import ServiceLoadBalancers
from kuryr.k8s.watch import Source, Store, Watcher

# Seconds a stopping controller waits for all its watch threads together.
WATCHERS_STOP_WAIT = 2.0
LOG = logging.getLogger(__name__)

KINDS = ("Namespace", "Pod", "NetworkPolicy", "Node")
SERVICE_KINDS = ("Service", "Endpoints")
# Services wait on the load-balancer backend between steps (an Octavia step takes
# 0.5-2 s): retried sooner than Neutron-bound handlers, and in their own queue,
# so pods' and policies' events never wait behind a load balancer's provisioning.
SERVICE_RETRY = RetryPolicy(base=0.25, cap=5.0)
SERVICE_WORKERS = 2
HEARTBEAT_PERIOD = 10.0
LEASE_DURATION = 30  # seconds: `kuryr status` calls a controller silent longer than this down
RENEW_DEADLINE = 20.0  # a leader that could not renew this long steps down (< LEASE_DURATION)


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


class Leadership:
    """Leader election on the controller's Lease: one controller of a cluster
    writes Neutron at a time, the others wait for its Lease to expire.

    ``hold()`` takes or renews the Lease (True: held).  ``wait_to_lead``
    blocks until it is held; then ``start`` renews it every ``period`` in its
    own thread.  A leader that sees another holder, or cannot renew for
    ``deadline`` seconds (the API server away: another may take over once the
    Lease expires), calls ``on_lost``: the process stops and its supervisor
    starts it again as a candidate, as client-go's leader election does."""

    def __init__(self, hold: Callable[[], bool], on_lost: Callable[[], None],
                 period: float = HEARTBEAT_PERIOD, deadline: float = RENEW_DEADLINE,
                 release: Callable[[], None] | None = None) -> None:
        self._hold = hold
        self._release = release
        self._on_lost = on_lost
        self._period = period
        self._deadline = deadline
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self.lost = False

    def wait_to_lead(self, stopping: threading.Event) -> bool:
        """True once this process holds the Lease; False if stopped first."""
        waiting_logged = False
        while not stopping.is_set():
            try:
                if self._hold():
                    LOG.info("leading: this controller holds the Lease")
                    return True
                if not waiting_logged:
                    LOG.info("another controller holds the Lease: waiting to lead")
                    waiting_logged = True
            except Exception as exc:  # noqa: BLE001 - the API server may be away a while
                LOG.warning("cannot read the controller's Lease: %s", exc)
            stopping.wait(self._period)
        return False

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="k8s-leadership", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        renewed = time.monotonic()
        while not self._stopping.wait(self._period):
            try:
                held = self._hold()
            except Exception as exc:  # noqa: BLE001 - retried until the deadline
                LOG.warning("cannot renew the controller's Lease: %s", exc)
                if time.monotonic() - renewed < self._deadline:
                    continue
                held = False
            if held:
                renewed = time.monotonic()
                continue
            LOG.error("lost the controller's Lease: stopping (to start again as a candidate)")
            self.lost = True
            self._on_lost()
            return

    def stop(self) -> None:
        """Stop renewing; a leader that stops cleanly gives the Lease up."""
        self._stopping.set()
        if self._thread is None:
            return  # never led
        if self._thread is not threading.current_thread():
            self._thread.join(self._period + 5)
        if not self.lost and self._release is not None:
            try:
                self._release()
            except Exception as exc:  # noqa: BLE001 - it expires anyway
                LOG.warning("cannot give the controller's Lease up: %s", exc)


class ServiceEvents:
    """Services and their Endpoints, one Service's events at a time in a queue
    of their own: an Endpoints change is handled as a change of its Service
    (same key), and every pass reads both from the watch stores."""

    def __init__(self, source: Source, services: ServiceLoadBalancers) -> None:
        self._services = services
        self.service_store = Store("Service")
        self.endpoints_store = Store("Endpoints")
        # A burst of pods changes one Endpoints many times while its load balancer
        # is busy: one pass serves them all.
        self.queue = KeyedQueue(self._handle, workers=SERVICE_WORKERS, retry=SERVICE_RETRY,
                                coalesce=True)
        self.watchers = [
            Watcher("Service", source, self.service_store, self.queue.put),
            Watcher("Endpoints", source, self.endpoints_store, self._endpoints_changed),
        ]

    def _endpoints_changed(self, event: Event) -> None:
        meta = metadata(event.obj)
        self.queue.put(Event(EventType.MODIFIED, "Service", {"metadata": {
            "namespace": meta.get("namespace"), "name": meta.get("name")}}))

    def _handle(self, event: Event) -> None:
        service = self.service_store.get(event.key)
        if service is None:
            if event.type is EventType.DELETED:  # released already, or by hand: collect
                self._services.remove_deleted(event.obj)
            return  # Endpoints of a Service not seen (or gone): nothing to serve
        _, namespace, name = event.key.split("/", 2)
        self._services.apply(service, self.endpoints_store.get(f"Endpoints/{namespace}/{name}"))


class Controller:
    def __init__(self, source: Source, view: ClusterView, policies: PolicyGroups,
                 networks: NamespaceNetworks | None, workers: int = 4,
                 leadership: Leadership | None = None, nodes: NodePorts | None = None,
                 services: ServiceLoadBalancers | None = None) -> None:
        self._policies = policies
        self.leadership = leadership
        self.queue = KeyedQueue(self._handle, workers=workers)
        node_store = Store("Node")
        self.handlers = Handlers(view, policies, networks, self.queue.put, nodes, node_store)
        stores = {"Namespace": view.namespaces, "Pod": view.pods,
                  "NetworkPolicy": view.policies, "Node": node_store}
        self.watchers = [Watcher(kind, source, stores[kind], self.queue.put) for kind in KINDS]
        self.services = ServiceEvents(source, services) if services is not None else None

    def _handle(self, event: Event) -> None:
        self.handlers(event)

    def lead(self, stopping: threading.Event) -> bool:
        """Wait until this controller leads (at once without leader election)."""
        return self.leadership is None or self.leadership.wait_to_lead(stopping)

    @property
    def queues(self) -> list[KeyedQueue]:
        return [self.queue] + ([self.services.queue] if self.services else [])

    @property
    def all_watchers(self) -> list[Watcher]:
        return self.watchers + (self.services.watchers if self.services else [])

    def start(self) -> None:
        """Shared groups first (every port update names them), then the
        workers, then the watchers that feed them; call lead() first."""
        self._policies.ensure_open_groups()
        for queue in self.queues:
            queue.start()
        for watcher in self.all_watchers:
            watcher.start()
        if self.leadership is not None:
            self.leadership.start()

    def stop(self) -> None:
        if self.leadership is not None:
            self.leadership.stop()
        # All asked at once, then one shared wait: each watch blocked on a quiet
        # stream used to get 2 s in turn (16 s with 8 watchers at SIGTERM).
        for watcher in self.all_watchers:
            watcher.ask_to_stop()
        deadline = time.monotonic() + WATCHERS_STOP_WAIT
        for watcher in self.all_watchers:
            watcher.join(max(0.0, deadline - time.monotonic()))
        for queue in self.queues:
            queue.stop()

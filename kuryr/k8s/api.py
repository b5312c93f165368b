"""The Kubernetes API server, through lightkube: the only module that imports it.

Objects cross this boundary as plain JSON dictionaries (``Obj``), the shape
the API server sends: the handlers and the pure policy code read them the way
the Kubernetes documentation writes them.
"""

from __future__ import annotations

import contextlib
import datetime
from collections.abc import Iterator, Sequence
from typing import Any

from lightkube import ApiError, Client, KubeConfig
from lightkube.core.client import on_error_raise
from lightkube.resources.coordination_v1 import Lease
from lightkube.resources.core_v1 import Endpoints, Namespace, Node, Pod, Service
from lightkube.resources.networking_v1 import NetworkPolicy
from lightkube.types import PatchType
from oslo_config import cfg

from kuryr.k8s.events import NotReady, Obj
from kuryr.k8s.watch import Gone, Listing

GONE = 410
NOT_FOUND = 404
CONFLICT = 409
FIELD_MANAGER = "kuryr-controller"

RESOURCES: dict[str, Any] = {
    "Namespace": Namespace,
    "Pod": Pod,
    "NetworkPolicy": NetworkPolicy,
    "Node": Node,
    "Service": Service,
    "Endpoints": Endpoints,
}
CLUSTER_SCOPED = frozenset({"Namespace", "Node"})
# The controller's heartbeat: `kuryr status` reads how recently it was renewed.
LEASE_NAMESPACE = "kube-system"
LEASE_NAME = "kuryr-controller"


class ObjectGone(Exception):
    """The object to patch no longer exists (404)."""


class ObjectChanged(NotReady):
    """The object changed since the version the patch was based on (409): the
    handler is tried again, with the newer version the watch brings meanwhile."""


def connect(conf: cfg.ConfigOpts) -> Client:
    """A client from ``[kubernetes] kubeconfig``, or the pod's service account."""
    path = conf.kubernetes.kubeconfig
    config = KubeConfig.from_file(path) if path else KubeConfig.from_service_account()
    return Client(config=config, field_manager=FIELD_MANAGER, trust_env=False)


def _namespace_arg(kind: str) -> dict[str, str]:
    return {} if kind in CLUSTER_SCOPED else {"namespace": "*"}


def _to_obj(model: Any) -> Obj:  # noqa: ANN401 - a lightkube model
    found = model.to_dict()
    return found if isinstance(found, dict) else {}


class KubeApi:
    """What the controller asks of the API server (a watch.Source, and patches)."""

    def __init__(self, client: Client) -> None:
        # Any: lightkube's overloads split global and namespaced resources,
        # which RESOURCES (picked by kind at run time) cannot tell mypy.
        self._client: Any = client

    def list(self, kind: str) -> Listing:
        found = self._client.list(RESOURCES[kind], **_namespace_arg(kind))
        items = [_to_obj(obj) for obj in found]
        return Listing(items, found.resourceVersion)

    def watch(self, kind: str, resource_version: str) -> Iterator[tuple[str, Obj]]:
        events = self._client.watch(RESOURCES[kind], resource_version=resource_version,
                                    on_error=on_error_raise, **_namespace_arg(kind))
        try:
            for kind_of_change, obj in events:
                yield kind_of_change, _to_obj(obj)
        except ApiError as exc:
            if exc.status.code == GONE:
                raise Gone(str(exc)) from exc
            raise

    def hold_lease(self, holder: str, duration: int, name: str = LEASE_NAME,
                   namespace: str = LEASE_NAMESPACE) -> bool:
        """Take or keep the Lease for ``holder`` (leader election); True when it
        holds it now.  Another holder's Lease renewed within its duration is left
        alone; every write names the version read, so of two takers one wins."""
        now = datetime.datetime.now(datetime.UTC)
        stamp = now.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        try:
            lease = self._client.get(Lease, name, namespace=namespace)
        except ApiError as exc:
            if exc.status.code != NOT_FOUND:
                raise
            return self._create_lease(holder, duration, name, namespace, stamp)
        spec = lease.spec
        current = spec.holderIdentity or ""
        if current and current != holder and _age(spec.renewTime, now) < \
                (spec.leaseDurationSeconds or duration):
            return False
        changes: dict[str, Any] = {"holderIdentity": holder, "leaseDurationSeconds": duration,
                                   "renewTime": stamp}
        if current != holder:
            changes |= {"acquireTime": stamp, "leaseTransitions": (spec.leaseTransitions or 0)
                        + (1 if current else 0)}
        body = {"metadata": {"resourceVersion": lease.metadata.resourceVersion},
                "spec": changes}
        try:
            self._client.patch(Lease, name, body, namespace=namespace,
                               patch_type=PatchType.MERGE)
        except ApiError as exc:
            if exc.status.code == CONFLICT:  # another took or renewed it meanwhile
                return False
            raise
        return True

    def release_lease(self, holder: str, name: str = LEASE_NAME,
                      namespace: str = LEASE_NAMESPACE) -> None:
        """Give the Lease up at a clean stop, so a waiting controller leads at once
        instead of after its expiry; nothing when another holds it."""
        lease = self._client.get(Lease, name, namespace=namespace)
        if lease.spec.holderIdentity != holder:
            return
        body = {"metadata": {"resourceVersion": lease.metadata.resourceVersion},
                "spec": {"holderIdentity": None, "renewTime": None}}
        with contextlib.suppress(ApiError):  # taken meanwhile: not ours to give
            self._client.patch(Lease, name, body, namespace=namespace,
                               patch_type=PatchType.MERGE)

    def _create_lease(self, holder: str, duration: int, name: str, namespace: str,
                      stamp: str) -> bool:
        lease = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                 "metadata": {"name": name, "namespace": namespace},
                 "spec": {"holderIdentity": holder, "leaseDurationSeconds": duration,
                          "acquireTime": stamp, "renewTime": stamp, "leaseTransitions": 0}}
        try:
            self._client.create(Lease.from_dict(lease))
        except ApiError as exc:
            if exc.status.code == CONFLICT:  # another made it first
                return False
            raise
        return True

    def lease_age(self) -> tuple[str, float] | None:
        """(holder, seconds since the controller's last renewal); None: no Lease."""
        try:
            lease = self._client.get(Lease, LEASE_NAME, namespace=LEASE_NAMESPACE)
        except ApiError as exc:
            if exc.status.code == NOT_FOUND:
                return None
            raise
        return (lease.spec.holderIdentity or "",
                _age(lease.spec.renewTime, datetime.datetime.now(datetime.UTC)))

    def patch_metadata(self, kind: str, obj: Obj, *,
                       annotations: dict[str, str | None] | None = None,
                       finalizers: Sequence[str] | None = None) -> Obj:
        """A merge patch of the object's annotations (None removes one) and
        finalizers (the whole list), valid only for the version read: a
        finalizer list written over a newer one would drop another's."""
        meta = obj["metadata"]
        changes: dict[str, Any] = {"resourceVersion": meta["resourceVersion"]}
        if annotations is not None:
            changes["annotations"] = annotations
        if finalizers is not None:
            changes["finalizers"] = [*finalizers]
        kwargs = {} if kind in CLUSTER_SCOPED else {"namespace": meta["namespace"]}
        try:
            patched = self._client.patch(RESOURCES[kind], meta["name"], {"metadata": changes},
                                         patch_type=PatchType.MERGE, **kwargs)
        except ApiError as exc:
            if exc.status.code == NOT_FOUND:
                raise ObjectGone(f"{kind} {meta['name']} is gone") from exc
            if exc.status.code == CONFLICT:
                raise ObjectChanged(f"{kind} {meta['name']} changed meanwhile") from exc
            raise
        return _to_obj(patched)

    def patch_service_status(self, service: Obj, status: dict[str, Any]) -> None:
        """A merge patch of a Service's status (its load balancer's address)."""
        meta = service["metadata"]
        try:
            self._client.patch(Service.Status, meta["name"], {"status": status},
                               namespace=meta["namespace"], patch_type=PatchType.MERGE)
        except ApiError as exc:
            if exc.status.code == NOT_FOUND:
                raise ObjectGone(f"Service {meta['name']} is gone") from exc
            raise


def _age(renewed: datetime.datetime | str | None, now: datetime.datetime) -> float:
    """Seconds since a Lease's renewTime (infinite: never renewed)."""
    if renewed is None:
        return float("inf")
    if isinstance(renewed, str):
        renewed = datetime.datetime.fromisoformat(renewed)
    return (now - renewed).total_seconds()

"""The node daemon's view of which Neutron network each namespace's pods go on.

The controller (kuryr/k8s/namespaces.py) writes a Namespace's network into its
annotation marks.K8S_NETWORK_ANNOTATION; the daemon follows Namespaces with a
watch (kuryr/k8s/watch.py) and keeps the parsed annotations here, so an ADD
asks the API server nothing.  An ADD for a namespace whose annotation has not
come yet waits a bounded time for the watch to bring it (woken by the watch,
not polling), then answers "try again later" (CNI code 11): the runtime
retries the pod's sandbox.
"""

from __future__ import annotations

import ipaddress
import json
import threading
from dataclasses import dataclass

from kuryr import errors
from kuryr.k8s.events import Event, EventType, metadata
from kuryr.neutron import marks

ANNOTATION_FIELDS = ("network_id", "subnet_id", "cidr")


@dataclass(frozen=True)
class AnnotatedNetwork:
    """What a Namespace's annotation says (namespaces.network_annotation)."""

    network_id: str
    subnet_id: str
    cidr: str


class BadAnnotation(errors.InvalidInput):
    """The namespace's annotation is there but unusable: retrying does not help
    until someone fixes it (CNI code 7, the message names the namespace)."""


class NetworkNotAnnounced(errors.BackendUnavailable):
    """The namespace's annotation did not come in time (CNI code 11: try again)."""


def parse_network_annotation(namespace: str, raw: str) -> AnnotatedNetwork:
    """The annotation's JSON; BadAnnotation naming the namespace when it is not
    the controller's shape."""
    where = f"namespace {namespace}: annotation {marks.K8S_NETWORK_ANNOTATION}"
    try:
        value = json.loads(raw)
    except ValueError as exc:
        raise BadAnnotation(f"{where} is not JSON ({exc}): {raw[:200]!r}") from None
    if not isinstance(value, dict):
        raise BadAnnotation(f"{where} is not a JSON object: {raw[:200]!r}")
    missing = [key for key in ANNOTATION_FIELDS
               if not isinstance(value.get(key), str) or not value[key]]
    if missing:
        raise BadAnnotation(f"{where} lacks {', '.join(missing)}: {raw[:200]!r}")
    try:
        ipaddress.ip_network(value["cidr"])
    except ValueError as exc:
        raise BadAnnotation(f"{where}: cidr {value['cidr']!r} is not a network ({exc})") \
            from None
    return AnnotatedNetwork(*(str(value[key]) for key in ANNOTATION_FIELDS))


def annotation_of(obj: dict[str, object]) -> str | None:
    annotations = metadata(obj).get("annotations")
    if not isinstance(annotations, dict):
        return None
    found = annotations.get(marks.K8S_NETWORK_ANNOTATION)
    return found if isinstance(found, str) else None


class NamespaceNetworkCache:
    """Namespace name -> its annotated network (or why the annotation is unusable),
    fed by the Namespace watch's events; thread-safe."""

    def __init__(self, wait: float) -> None:
        self.wait = wait  # seconds an ADD waits for a namespace's annotation
        self._changed = threading.Condition()
        # The parsed annotation, or the message of BadAnnotation (a fresh
        # exception per request: one instance raised in many threads would
        # share a traceback).
        self._networks: dict[str, AnnotatedNetwork | str] = {}

    def observe(self, event: Event) -> None:
        """The watch's emit: one Namespace changed."""
        name = str(metadata(event.obj).get("name") or "")
        if not name:
            return
        raw = None if event.type is EventType.DELETED else annotation_of(event.obj)
        parsed: AnnotatedNetwork | str | None = None
        if raw is not None:
            try:
                parsed = parse_network_annotation(name, raw)
            except BadAnnotation as exc:
                parsed = str(exc)
        with self._changed:
            if parsed is None:
                self._networks.pop(name, None)
            else:
                self._networks[name] = parsed
            self._changed.notify_all()

    def network_of(self, namespace: str) -> AnnotatedNetwork:
        """The namespace's network, waiting up to ``wait`` seconds for the watch to
        bring its annotation; NetworkNotAnnounced (try again) when it does not."""
        with self._changed:
            self._changed.wait_for(lambda: namespace in self._networks, timeout=self.wait)
            found = self._networks.get(namespace)
        if found is None:
            raise NetworkNotAnnounced(
                f"namespace {namespace} has no {marks.K8S_NETWORK_ANNOTATION} annotation "
                f"yet (waited {self.wait:g} s): the controller makes its network; try "
                "again later")
        if isinstance(found, str):
            raise BadAnnotation(found)
        return found

"""What the watcher hands to the handlers: one change of one object."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

# An object as the API server sends it (JSON decoded): handlers read the few
# fields they need, and tests build one from the documentation's YAML.
Obj = dict[str, Any]


class EventType(enum.StrEnum):
    ADDED = "ADDED"
    MODIFIED = "MODIFIED"
    DELETED = "DELETED"


class NotReady(Exception):
    """A handler cannot finish yet (a namespace's network not made, a port not
    there yet): the queue retries the same event with backoff, in order."""


def metadata(obj: Obj) -> dict[str, Any]:
    meta = obj.get("metadata")
    return meta if isinstance(meta, dict) else {}


def object_key(kind: str, obj: Obj) -> str:
    """kind/namespace/name: the unit of ordering (a cluster-scoped object has
    an empty namespace)."""
    meta = metadata(obj)
    return f"{kind}/{meta.get('namespace') or ''}/{meta.get('name') or ''}"


def resource_version(obj: Obj) -> str:
    return str(metadata(obj).get("resourceVersion") or "")


def labels(obj: Obj) -> dict[str, str]:
    found = metadata(obj).get("labels")
    return {str(k): str(v) for k, v in found.items()} if isinstance(found, dict) else {}


@dataclass(frozen=True)
class Event:
    type: EventType
    kind: str  # "Namespace", "Pod", "NetworkPolicy"
    obj: Obj

    @property
    def key(self) -> str:
        return object_key(self.kind, self.obj)

"""List, then watch, one kind of object; keep a cache of what was seen.

After a dropped watch the next one resumes from the last resourceVersion seen;
a 410 Gone (that version is older than the API server keeps) means a re-list,
and the re-list is compared with the cache so objects deleted meanwhile still
reach the handlers as DELETED events.  Errors back off, up to a bound.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Protocol

from kuryr.k8s.events import Event, EventType, Obj, object_key, resource_version
from kuryr.k8s.queue import backoff

LOG = logging.getLogger(__name__)


class Gone(Exception):
    """The API server no longer has the resourceVersion a watch asked for (410)."""


@dataclass(frozen=True)
class Listing:
    items: list[Obj]
    resource_version: str


class Source(Protocol):
    """The API server as the watcher needs it (kuryr.k8s.api.KubeApi)."""

    def list(self, kind: str) -> Listing: ...

    def watch(self, kind: str, resource_version: str) -> Iterator[tuple[str, Obj]]:
        """(type, object) pairs from that version on; raises Gone, or anything
        else when the connection drops."""
        ...


class Store:
    """The last state seen of each object of one kind, by key; thread-safe."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._lock = threading.Lock()
        self._objects: dict[str, Obj] = {}

    def get(self, key: str) -> Obj | None:
        with self._lock:
            return self._objects.get(key)

    def values(self) -> list[Obj]:
        with self._lock:
            return list(self._objects.values())

    def put(self, obj: Obj) -> None:
        with self._lock:
            self._objects[object_key(self.kind, obj)] = obj

    def remove(self, obj: Obj) -> None:
        with self._lock:
            self._objects.pop(object_key(self.kind, obj), None)

    def replace_all(self, objs: list[Obj]) -> list[Event]:
        """Take a fresh list as the truth; the events that take the cache there
        (ADDED, MODIFIED for a changed resourceVersion, DELETED for the missing)."""
        fresh = {object_key(self.kind, obj): obj for obj in objs}
        with self._lock:
            old, self._objects = self._objects, fresh
        events = [Event(EventType.DELETED, self.kind, obj)
                  for key, obj in old.items() if key not in fresh]
        for key, obj in fresh.items():
            before = old.get(key)
            if before is None:
                events.append(Event(EventType.ADDED, self.kind, obj))
            elif resource_version(before) != resource_version(obj):
                events.append(Event(EventType.MODIFIED, self.kind, obj))
        return events


@dataclass(frozen=True)
class WatchBackoff:
    base: float = 1.0
    cap: float = 30.0


class Watcher:
    """One kind: list, then watch, until stopped; owns its thread."""

    def __init__(self, kind: str, source: Source, store: Store,
                 emit: Callable[[Event], None], delays: WatchBackoff | None = None) -> None:
        self.kind = kind
        self._source = source
        self._store = store
        self._emit = emit
        self._delays = delays or WatchBackoff()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._version = ""  # "" until listed, and after a 410: list again
        self._failures = 0
        self.synced = threading.Event()  # set once the first list is emitted

    def start(self) -> None:
        self._thread = threading.Thread(target=self.run, name=f"k8s-watch-{self.kind}",
                                        daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 2.0) -> None:
        """A watch blocked on a quiet stream ends with the process (the thread is
        a daemon): the events it would give are re-listed at the next start."""
        self.ask_to_stop()
        self.join(timeout)

    def ask_to_stop(self) -> None:
        """Stop after the current step, without waiting (see :meth:`join`)."""
        self._stop.set()

    def join(self, timeout: float) -> None:
        if self._thread is not None:
            self._thread.join(timeout)

    def run(self) -> None:
        while not self._stop.is_set():
            self.step()

    def step(self) -> None:
        """List if needed, then follow one watch until it ends; what ended it
        decides where the next step starts."""
        try:
            if not self._version:
                self._relist()
            self._follow_watch()
            self._failures = 0  # the server closed the stream: resume at once
        except Gone:
            LOG.info("%s: resourceVersion %s expired (410 Gone): listing again",
                     self.kind, self._version)
            self._version = ""
        except Exception as exc:  # noqa: BLE001 - any failure: back off and resume
            self._failures += 1
            delay = backoff(self._failures, self._delays.base, self._delays.cap)
            LOG.warning("%s: watch failed (%s): again in %.0f s from version %s",
                        self.kind, exc, delay, self._version or "(list)")
            self._stop.wait(delay)

    def _relist(self) -> None:
        listing = self._source.list(self.kind)
        for event in self._store.replace_all(listing.items):
            self._emit(event)
        self._version = listing.resource_version
        self._failures = 0
        self.synced.set()

    def _follow_watch(self) -> None:
        for kind_of_change, obj in self._source.watch(self.kind, self._version):
            if self._stop.is_set():
                return
            if kind_of_change == "BOOKMARK":
                self._version = resource_version(obj) or self._version
                continue
            self._apply(EventType(kind_of_change), obj)
            self._failures = 0

    def _apply(self, kind_of_change: EventType, obj: Obj) -> None:
        if kind_of_change is EventType.DELETED:
            self._store.remove(obj)
        else:
            self._store.put(obj)
        self._version = resource_version(obj) or self._version
        self._emit(Event(kind_of_change, self.kind, obj))

"""Per-object ordered dispatch: events of one object are handled one at a time,
in the order they came; different objects in parallel by a small worker pool.

A handler raising :class:`~kuryr.k8s.events.NotReady` gets the same event again
after a backoff (the object's later events wait behind it, so order holds);
any other error is logged and retried a bounded number of times, then the
event is dropped (the next event of that object, or a re-list, brings the
object's state again: handlers act on the whole object, not on the change).
"""

from __future__ import annotations

import collections
import heapq
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from kuryr.k8s.events import Event, EventType, NotReady

LOG = logging.getLogger(__name__)

Handler = Callable[[Event], None]


def backoff(attempt: int, base: float, cap: float) -> float:
    """Seconds to wait before retry number ``attempt`` (1, 2, ...): doubling, capped."""
    return float(min(cap, base * 2 ** max(0, attempt - 1)))


@dataclass(frozen=True)
class RetryPolicy:
    base: float = 0.5
    cap: float = 30.0
    max_failures: int = 5  # errors other than NotReady before an event is dropped


@dataclass
class _Pending:
    """The events of one object not handled yet; the head is the next one."""

    events: collections.deque[Event]
    attempts: int = 0  # tries of the head event so far
    failures: int = 0  # of those, failures other than NotReady
    busy: bool = False  # a worker holds it, or it waits for its retry time


class KeyedQueue:
    """Owns its worker threads: start() and stop() them."""

    def __init__(self, handler: Handler, workers: int = 4,
                 retry: RetryPolicy | None = None, coalesce: bool = False) -> None:
        """``coalesce``: the handler reads the object's newest state from the
        watch cache, so an event waiting behind another of the same object is
        replaced by a newer one (a DELETED is never merged)."""
        self._handler = handler
        self._coalesce = coalesce
        self._workers = workers
        self._retry = retry or RetryPolicy()
        self._cond = threading.Condition()
        self._pending: dict[str, _Pending] = {}
        self._ready: collections.deque[str] = collections.deque()
        self._delayed: list[tuple[float, str]] = []  # heap of (due time, key)
        self._stopping = False
        self._threads: list[threading.Thread] = []

    def put(self, event: Event) -> None:
        with self._cond:
            pending = self._pending.get(event.key)
            if pending is None:
                pending = self._pending[event.key] = _Pending(collections.deque())
            if self._coalesce and len(pending.events) > 1 \
                    and EventType.DELETED not in (event.type, pending.events[-1].type):
                pending.events[-1] = event  # the head may be running: never replaced
                return
            pending.events.append(event)
            if not pending.busy and len(pending.events) == 1:
                self._ready.append(event.key)
                self._cond.notify()

    def start(self) -> None:
        for number in range(self._workers):
            thread = threading.Thread(target=self._work, name=f"k8s-worker-{number}",
                                      daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self, timeout: float = 10.0) -> None:
        """Let the handlers running finish; events not started are dropped (a
        restarted controller gets them again from its first list)."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        for thread in self._threads:
            thread.join(timeout)
        self._threads.clear()

    def idle(self) -> bool:
        """Nothing queued, running or waiting for a retry (tests, status)."""
        with self._cond:
            return not self._pending

    def _work(self) -> None:
        while True:
            key = self._next_key()
            if key is None:
                return
            self._handle_head(key)

    def _next_key(self) -> str | None:
        """The next object with an event to handle, once it is due; None on stop."""
        with self._cond:
            while not self._stopping:
                now = time.monotonic()
                while self._delayed and self._delayed[0][0] <= now:
                    self._ready.append(heapq.heappop(self._delayed)[1])
                if self._ready:
                    key = self._ready.popleft()
                    self._pending[key].busy = True
                    return key
                wait = self._delayed[0][0] - now if self._delayed else None
                self._cond.wait(wait)
            return None

    def _handle_head(self, key: str) -> None:
        with self._cond:
            pending = self._pending[key]
            event = pending.events[0]
            pending.attempts += 1
        # The handler runs without the lock: it makes network calls.
        delay = self._run(event, pending)
        with self._cond:
            if delay is not None:
                heapq.heappush(self._delayed, (time.monotonic() + delay, key))
                self._cond.notify()
                return
            pending.events.popleft()
            pending.attempts = pending.failures = 0
            pending.busy = False
            if pending.events:
                self._ready.append(key)
                self._cond.notify()
            else:
                del self._pending[key]

    def _run(self, event: Event, pending: _Pending) -> float | None:
        """Handle one event; the seconds to wait before trying it again, or None
        when it is done with (handled, or given up on)."""
        retry = self._retry
        try:
            self._handler(event)
        except NotReady as exc:
            delay = backoff(pending.attempts, retry.base, retry.cap)
            LOG.debug("%s %s not ready (%s): again in %.1f s", event.type, event.key, exc, delay)
            return delay
        except Exception:  # one object's failure must not stop the others (logged)
            pending.failures += 1
            if pending.failures >= retry.max_failures:
                LOG.exception("%s %s failed %d times: dropped", event.type, event.key,
                              pending.failures)
                return None
            delay = backoff(pending.attempts, retry.base, retry.cap)
            LOG.exception("%s %s failed: again in %.1f s", event.type, event.key, delay)
            return delay
        return None

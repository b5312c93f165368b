"""Neutron writes taken off the container's critical path.

A container must not wait for bookkeeping that changes nothing about its
packets: recording device_id/device_owner on a port that is already bound and
wired, or deleting the port of a container that is already gone.  Such writes
run here, in order, retried on transient failures.  What makes this crash-safe
is local: the OVS interface carries the endpoint id (kuryr/binding/ovs.py),
so a restarted Kuryr still finds an endpoint's port, and Kuryr's garbage
collector (kuryr/libnetwork/gc.py) deletes ports whose container is gone.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from kuryr import errors

LOG = logging.getLogger(__name__)
# A Neutron outage of a few minutes (a restart, an upgrade) must not drop a
# write: keep retrying with backoff for this long before giving up on it.
RETRY_FOR = 600.0
NOT_FOUND_TRIES = 8  # ~35 s of backoff: a neutron-server start on a loaded host


@dataclass
class _Job:
    key: str
    what: str
    action: Callable[[], object]
    # An Event, so that cancelling also cuts short a retry's backoff sleep.
    cancelled: threading.Event = field(default_factory=threading.Event)


class Background:
    def __init__(self, counter_operation: Callable | None = None) -> None:
        self._queue: queue.Queue[_Job | None] = queue.Queue()
        self._pending: dict[str, list[_Job]] = {}
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._busy = 0
        self._operation = counter_operation
        self._thread = threading.Thread(target=self._run, name="neutron-background",
                                        daemon=True)
        self._thread.start()

    def submit(self, key: str, what: str, action: Callable[[], object]) -> None:
        """Run ``action`` soon; ``key`` groups the jobs of one resource."""
        job = _Job(key, what, action)
        with self._lock:
            self._pending.setdefault(key, []).append(job)
            self._busy += 1
        self._queue.put(job)

    def cancel(self, key: str) -> None:
        """Drop the jobs of ``key`` that have not succeeded yet, the running one
        included (e.g. an update of a port Kuryr is deleting: its 404s must not
        be retried while the writes queued behind it wait)."""
        with self._lock:
            for job in self._pending.get(key, []):
                job.cancelled.set()

    def wait_idle(self, timeout: float = 60) -> bool:
        """Block until every submitted job has run (before deleting a network)."""
        deadline = time.monotonic() + timeout
        with self._idle:
            while self._busy:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._idle.wait(left)
        return True

    def _run(self) -> None:
        while True:
            job = self._queue.get()
            if job is None:
                return
            try:
                if not job.cancelled.is_set():
                    self._attempt(job)
            finally:
                with self._idle:
                    jobs = self._pending.get(job.key, [])
                    if job in jobs:
                        jobs.remove(job)
                    if not jobs:
                        self._pending.pop(job.key, None)
                    self._busy -= 1
                    self._idle.notify_all()

    def _attempt(self, job: _Job) -> None:
        delay = 0.5
        give_up = time.monotonic() + RETRY_FOR
        attempt = 0
        while time.monotonic() < give_up and not job.cancelled.is_set():
            attempt += 1
            started = time.monotonic()
            try:
                if self._operation is not None:
                    with self._operation() as tally:
                        job.action()
                    LOG.info("background %s: %d Neutron requests %s in %.0f ms", job.what,
                             tally.total, dict(tally.by_method),
                             (time.monotonic() - started) * 1000)
                else:
                    job.action()
                return
            except errors.NotFound as exc:
                # A neutron-server that is starting answers 404 for resources it has
                # (seen after an outage): believe it only after a few tries.
                if attempt >= NOT_FOUND_TRIES:
                    LOG.error("background %s failed: %s", job.what, exc)
                    return
                LOG.warning("background %s: %s (attempt %d, retrying in %.1f s)",
                            job.what, exc, attempt, delay)
                job.cancelled.wait(delay)
                delay = min(delay * 2, 10)
            except errors.BackendUnavailable as exc:
                LOG.warning("background %s failed (attempt %d, retrying in %.1f s): %s",
                            job.what, attempt, delay, exc)
                job.cancelled.wait(delay)
                delay = min(delay * 2, 10)
            except Exception as exc:  # noqa: BLE001 - logged; the gc catches leftovers
                LOG.error("background %s failed: %s", job.what, exc)
                return
        if job.cancelled.is_set():
            LOG.info("background %s: cancelled (attempt %d)", job.what, attempt)
        else:
            LOG.error("background %s abandoned after %d attempts in %.0f s; the garbage "
                      "collector takes over", job.what, attempt, RETRY_FOR)

    def close(self) -> None:
        self._queue.put(None)

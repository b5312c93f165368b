"""Neutron writes taken off the container's critical path.

A container must not wait for bookkeeping that changes nothing about its
packets: recording device_id/device_owner on a port that is already bound and
wired, or deleting the port of a container that is already gone.  Such writes
run here, in order, retried on transient failures.  What makes this crash-safe
is local: the OVS interface carries the endpoint id (kuryr/binding/ovs.py),
so a restarted Kuryr still finds an endpoint's port, and Kuryr's garbage
collector (kuryr/libnetwork/gc.py) deletes ports whose container is gone.

Jobs carry a group (the Neutron network of the port they write), so deleting
a network waits for that network's writes only, never for the whole queue.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import Counter
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field

from kuryr import errors
from kuryr.core.lull import Lull
from kuryr.neutron.client import RequestTally

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
    group: str
    # An Event, so that cancelling also cuts short a retry's backoff sleep.
    cancelled: threading.Event = field(default_factory=threading.Event)


Operation = Callable[[], AbstractContextManager[RequestTally]]


class Background:
    """One writer thread, started and stopped by the daemon (kuryr/core/daemon.py)."""

    def __init__(self, counter_operation: Operation | None = None,
                 lull: Lull | None = None) -> None:
        self._queue: queue.Queue[_Job | None] = queue.Queue()
        self._pending: dict[str, list[_Job]] = {}
        self._groups: Counter[str] = Counter()  # group -> jobs not finished
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._busy = 0
        self._operation = counter_operation
        self._lull = lull  # writes wait for a lull in container starts
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="neutron-background",
                                        daemon=True)

    def start(self) -> None:
        self._thread.start()

    def submit(self, key: str, what: str, action: Callable[[], object],
               group: str = "") -> None:
        """Run ``action`` soon; ``key`` names the resource it writes (cancel), ``group``
        what it belongs to (wait_group: the port's network)."""
        job = _Job(key, what, action, group)
        with self._lock:
            self._pending.setdefault(key, []).append(job)
            self._groups[group] += 1
            self._busy += 1
        self._queue.put(job)

    def cancel(self, key: str) -> None:
        """Drop the jobs of ``key`` that have not succeeded yet, the running one
        included (e.g. an update of a port Kuryr is deleting: its 404s must not
        be retried while the writes queued behind it wait)."""
        with self._lock:
            for job in self._pending.get(key, []):
                job.cancelled.set()

    def wait_group(self, group: str, timeout: float) -> bool:
        """Block until the jobs of ``group`` have run (before deleting a network)."""
        return self._wait(lambda: self._groups[group] > 0, timeout)

    def wait_idle(self, timeout: float = 60) -> bool:
        """Block until every submitted job has run (at shutdown)."""
        return self._wait(lambda: self._busy > 0, timeout)

    def _wait(self, busy: Callable[[], bool], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        with self._idle:
            while busy():
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
                if self._lull is not None and not job.cancelled.is_set():
                    self._lull.wait(give_up=self._stopping.is_set)
                if not job.cancelled.is_set():
                    self._attempt(job)
            finally:
                with self._idle:
                    jobs = self._pending.get(job.key, [])
                    if job in jobs:
                        jobs.remove(job)
                    if not jobs:
                        self._pending.pop(job.key, None)
                    self._groups[job.group] -= 1
                    if self._groups[job.group] <= 0:
                        del self._groups[job.group]
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
                    LOG.error("background %s failed: %s", job.what, exc)  # noqa: TRY400 - expected, no trace
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
                LOG.error("background %s failed: %s", job.what, exc)  # noqa: TRY400 - expected, no trace
                return
        if job.cancelled.is_set():
            LOG.info("background %s: cancelled (attempt %d)", job.what, attempt)
        else:
            LOG.error("background %s abandoned after %d attempts in %.0f s; the garbage "
                      "collector takes over", job.what, attempt, RETRY_FOR)

    def stop(self, timeout: float) -> None:
        """Let the queued writes finish (up to ``timeout``), then end the thread."""
        if not self._thread.is_alive():
            return
        self._stopping.set()  # the queue is written out now, lull or not
        if self._lull is not None:
            self._lull.interrupt()
        if not self.wait_idle(timeout):
            LOG.warning("stopping with Neutron writes still queued; the next start "
                        "collects leftovers")
            with self._lock:
                for jobs in self._pending.values():
                    for job in jobs:
                        job.cancelled.set()
        self._queue.put(None)
        self._thread.join(timeout=5)

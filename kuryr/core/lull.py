"""Background work that waits for a lull in container starts.

A burst of pod starts is bounded by the host's CPU (kubelet, containerd, runc,
the CNI) and a Neutron write costs CPU in neutron-server, its database and
OVN.  Writes no start waits for (a pod's record on its port, a pool refill
nobody waits on) are held while starts are in flight and run once none has
been for ``quiet`` seconds, never more than ``patience`` seconds late: under
a steady stream of starts they stop waiting (and wait again only after the
next lull), so nothing queues up without bound.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator


class Lull:
    """Owned by the front end's service; starts are marked with ``starting()``,
    background work calls ``wait()`` before each piece of work."""

    def __init__(self, quiet: float, patience: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.quiet = quiet
        self.patience = patience
        self._clock = clock
        self._cond = threading.Condition()
        self._in_flight = 0
        self._last_end = float("-inf")
        self._held_since: float | None = None  # the first wait since the last lull

    @contextlib.contextmanager
    def starting(self) -> Iterator[None]:
        """Marks one container start (an ADD) while it runs."""
        with self._cond:
            self._in_flight += 1
        try:
            yield
        finally:
            with self._cond:
                self._in_flight -= 1
                self._last_end = self._clock()
                self._cond.notify_all()

    def interrupt(self) -> None:
        """Wake the waiters to check their ``give_up`` (a start now waits on them)."""
        with self._cond:
            self._cond.notify_all()

    def wait(self, give_up: Callable[[], bool] | None = None) -> float:
        """Block until a lull, the patience ran out, or ``give_up()`` (checked at
        least every second, and on ``interrupt``); the seconds waited."""
        began = self._clock()
        with self._cond:
            while True:
                now = self._clock()
                quiet_for = now - self._last_end
                if self._in_flight == 0 and quiet_for >= self.quiet:
                    self._held_since = None  # a lull: the next burst is waited out again
                    break
                if self._held_since is None:
                    self._held_since = now
                left = self._held_since + self.patience - now
                if left <= 0 or (give_up is not None and give_up()):
                    break
                until_quiet = self.quiet - quiet_for if self._in_flight == 0 else left
                self._cond.wait(min(left, max(until_quiet, 0.01), 1.0))
        return self._clock() - began

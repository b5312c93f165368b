"""Lull: background writes wait for container starts to pause, within patience."""

from __future__ import annotations

import threading
import time

from kuryr.core.lull import Lull


def test_with_no_start_in_flight_nothing_waits():
    assert Lull(quiet=0.2, patience=5).wait() < 0.05


def test_a_write_waits_until_the_starts_have_paused_for_quiet_seconds():
    lull = Lull(quiet=0.2, patience=5)
    done = threading.Event()

    def start() -> None:
        with lull.starting():
            time.sleep(0.3)
        done.set()

    threading.Thread(target=start).start()
    time.sleep(0.05)
    waited = lull.wait()
    assert done.is_set()
    assert 0.4 <= waited < 1.5  # the start's 0.3 s, then 0.2 s of quiet


def test_a_steady_stream_of_starts_holds_writes_for_patience_only_then_not_again():
    lull = Lull(quiet=0.3, patience=0.5)
    stop = threading.Event()

    def stream() -> None:
        while not stop.is_set():
            with lull.starting():
                time.sleep(0.05)

    thread = threading.Thread(target=stream)
    thread.start()
    try:
        assert 0.4 <= lull.wait() < 1.2
        assert lull.wait() < 0.1  # no lull since: the queue is not held again
    finally:
        stop.set()
        thread.join(5)
    time.sleep(0.4)
    assert lull.wait() < 0.1  # a lull came: reset


def test_give_up_ends_the_wait_when_interrupted():
    lull = Lull(quiet=0.2, patience=30)
    awaited = threading.Event()
    with lull.starting():
        threading.Timer(0.1, lambda: (awaited.set(), lull.interrupt())).start()
        assert lull.wait(give_up=awaited.is_set) < 0.5

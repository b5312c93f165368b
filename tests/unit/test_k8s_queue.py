"""The per-object queue: order within an object, parallelism across objects,
retries of NotReady and of failures."""

import threading
import time

import pytest

from kuryr.k8s.events import Event, EventType, NotReady
from kuryr.k8s.queue import KeyedQueue, RetryPolicy, backoff

FAST = RetryPolicy(base=0.001, cap=0.01, max_failures=3)


def pod(name, version="1"):
    return {"metadata": {"namespace": "ns", "name": name, "resourceVersion": version}}


def event(name, version="1", kind=EventType.MODIFIED):
    return Event(kind, "Pod", pod(name, version))


def wait_idle(queue, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not queue.idle():
        assert time.monotonic() < deadline, "queue did not drain"
        time.sleep(0.002)


@pytest.fixture
def running():
    started = []

    def start(handler, workers=4, retry=FAST):
        queue = KeyedQueue(handler, workers=workers, retry=retry)
        queue.start()
        started.append(queue)
        return queue

    yield start
    for queue in started:
        queue.stop()


def test_backoff_doubles_up_to_the_cap():
    assert [backoff(n, 0.5, 3) for n in (1, 2, 3, 4, 5)] == [0.5, 1, 2, 3, 3]


def test_events_of_one_object_are_handled_in_order_one_at_a_time(running):
    seen, inside, overlaps = [], [0], []
    lock = threading.Lock()

    def handler(ev):
        with lock:
            inside[0] += 1
            overlaps.append(inside[0])
        time.sleep(0.001)
        seen.append(ev.obj["metadata"]["resourceVersion"])
        with lock:
            inside[0] -= 1

    queue = running(handler)
    for version in range(50):
        queue.put(event("a", str(version)))
    wait_idle(queue)
    assert seen == [str(v) for v in range(50)]
    assert max(overlaps) == 1


def test_different_objects_are_handled_in_parallel(running):
    both_inside = threading.Barrier(2, timeout=2)

    def handler(ev):
        both_inside.wait()  # breaks (and fails the handler) unless two run at once

    queue = running(handler)
    queue.put(event("a"))
    queue.put(event("b"))
    wait_idle(queue)
    assert not both_inside.broken


def test_not_ready_retries_the_same_event_and_later_events_wait(running):
    calls = []

    def handler(ev):
        calls.append(ev.obj["metadata"]["resourceVersion"])
        if calls.count("1") < 4:
            raise NotReady("network not made yet")

    queue = running(handler)
    queue.put(event("a", "1"))
    queue.put(event("a", "2"))
    wait_idle(queue)
    assert calls == ["1", "1", "1", "1", "2"]


def test_not_ready_is_retried_beyond_the_failure_bound(running):
    calls = []

    def handler(ev):
        calls.append(1)
        if len(calls) < FAST.max_failures + 3:
            raise NotReady("still waiting")

    queue = running(handler)
    queue.put(event("a"))
    wait_idle(queue)
    assert len(calls) == FAST.max_failures + 3


def test_other_errors_are_retried_a_bounded_number_of_times_then_dropped(running):
    calls = []

    def handler(ev):
        calls.append(ev.obj["metadata"]["resourceVersion"])
        if ev.obj["metadata"]["resourceVersion"] == "1":
            raise RuntimeError("boom")

    queue = running(handler)
    queue.put(event("a", "1"))
    queue.put(event("a", "2"))
    wait_idle(queue)
    assert calls == ["1"] * FAST.max_failures + ["2"]


def test_a_waiting_object_does_not_hold_up_the_others(running):
    handled = []
    release = threading.Event()

    def handler(ev):
        name = ev.obj["metadata"]["name"]
        if name == "slow" and not release.is_set():
            raise NotReady("later")
        handled.append(name)
        if name == "fast":
            release.set()

    queue = running(handler, workers=1, retry=RetryPolicy(base=0.01, cap=0.01))
    queue.put(event("slow"))
    queue.put(event("fast"))
    wait_idle(queue)
    assert handled == ["fast", "slow"]


def test_stop_ends_the_workers():
    queue = KeyedQueue(lambda ev: None, workers=2, retry=FAST)
    queue.start()
    queue.stop(timeout=2)
    assert not [t for t in threading.enumerate() if t.name.startswith("k8s-worker-")]


def test_a_coalescing_queue_keeps_the_running_event_the_newest_waiting_one_and_deletions():
    release = threading.Event()
    seen = []

    def handler(ev):
        seen.append((ev.type, ev.obj["metadata"]["resourceVersion"]))
        if len(seen) == 1:
            release.wait(5)

    queue = KeyedQueue(handler, workers=1, retry=FAST, coalesce=True)
    queue.start()
    try:
        queue.put(event("a", "1"))
        deadline = time.monotonic() + 5
        while not seen:  # the first is running
            assert time.monotonic() < deadline
            time.sleep(0.001)
        for version in range(2, 30):
            queue.put(event("a", str(version)))
        queue.put(event("a", "30", EventType.DELETED))
        queue.put(event("a", "31"))
        queue.put(event("a", "32"))
        release.set()
        wait_idle(queue)
    finally:
        queue.stop()
    assert seen == [(EventType.MODIFIED, "1"), (EventType.MODIFIED, "29"),
                    (EventType.DELETED, "30"), (EventType.MODIFIED, "32")]

"""Leader election on the controller's Lease (the real API server's side is
tested on the cluster: tests/integration/test_zzz_k8s.py)."""

from __future__ import annotations

import threading

from kuryr.k8s.controller import Leadership


def _answers(*values):
    """A hold() that answers these in turn (an Exception value is raised), then the last."""
    remaining = list(values)

    def hold() -> bool:
        value = remaining.pop(0) if len(remaining) > 1 else remaining[0]
        if isinstance(value, Exception):
            raise value
        return value
    return hold


def test_a_candidate_waits_until_the_lease_is_its_own():
    stopping = threading.Event()
    leadership = Leadership(_answers(False, RuntimeError("API server away"), False, True),
                            on_lost=stopping.set, period=0.01)
    assert leadership.wait_to_lead(stopping)
    assert not stopping.is_set()


def test_a_candidate_stopped_while_another_leads_never_leads():
    stopping = threading.Event()
    leadership = Leadership(_answers(False), on_lost=lambda: None, period=0.01)
    threading.Timer(0.05, stopping.set).start()
    assert not leadership.wait_to_lead(stopping)


def test_a_leader_that_sees_another_holder_stops_and_does_not_give_the_lease_up():
    lost = threading.Event()
    released = []
    leadership = Leadership(_answers(True, True, False), on_lost=lost.set, period=0.01,
                            release=lambda: released.append(True))
    assert leadership.wait_to_lead(threading.Event())
    leadership.start()
    assert lost.wait(5)
    assert leadership.lost
    leadership.stop()
    assert released == []


def test_a_leader_that_cannot_renew_until_the_deadline_steps_down():
    lost = threading.Event()
    leadership = Leadership(_answers(True, RuntimeError("API server away")), on_lost=lost.set,
                            period=0.01, deadline=0.1)
    assert leadership.wait_to_lead(threading.Event())
    leadership.start()
    assert lost.wait(5)


def test_a_leader_stopping_cleanly_gives_the_lease_up():
    released = []
    leadership = Leadership(_answers(True), on_lost=lambda: None, period=0.01,
                            release=lambda: released.append(True))
    assert leadership.wait_to_lead(threading.Event())
    leadership.start()
    leadership.stop()
    assert released == [True]
    assert not leadership.lost

"""KeyedLocks: one container's CNI verbs in order, other containers unhindered."""

from __future__ import annotations

import threading

import pytest

from kuryr.core.keyed import KeyedLocks


def test_one_key_is_held_by_one_thread_at_a_time_and_other_keys_do_not_wait():
    locks = KeyedLocks()
    inside = threading.Event()
    release = threading.Event()
    order = []

    def first():
        with locks.hold("c1"):
            inside.set()
            release.wait(5)
            order.append("first")

    def second():
        with locks.hold("c1"):
            order.append("second")

    one = threading.Thread(target=first)
    one.start()
    assert inside.wait(5)
    two = threading.Thread(target=second)
    two.start()
    with locks.hold("c2"):  # another container: not blocked by c1's holder
        order.append("other key")
    two.join(0.2)
    assert two.is_alive()  # waits for c1's holder
    release.set()
    one.join(5)
    two.join(5)
    assert order == ["other key", "first", "second"]


def test_a_key_is_forgotten_once_nobody_holds_or_waits_for_it():
    locks = KeyedLocks()
    with locks.hold("c1"), locks.hold("c2"):
        assert len(locks) == 2
    assert len(locks) == 0
    with pytest.raises(RuntimeError), locks.hold("c3"):
        _fail()
    assert len(locks) == 0


def _fail() -> None:
    raise RuntimeError("the verb failed")

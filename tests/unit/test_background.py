"""The background writer: ordering, retries and cancellation (pure logic)."""

from __future__ import annotations

import collections
import threading
import time

from kuryr import errors
from kuryr.core.background import Background
from kuryr.neutron import marks


def test_cancelling_a_job_that_keeps_getting_404_frees_the_queue_at_once():
    background = Background()
    background.start()
    first_attempt = threading.Event()
    done: list[str] = []

    def gone_port():
        first_attempt.set()
        raise errors.NotFound("port p1 could not be found")

    background.submit("p1", "return port p1 to the pool", gone_port)
    background.submit("sg", "delete security group", lambda: done.append("sg"))
    assert first_attempt.wait(5)
    started = time.monotonic()
    background.cancel("p1")  # the pool deleted p1 itself
    assert background.wait_idle(timeout=5), "the cancelled job kept the queue busy"
    assert time.monotonic() - started < 2
    assert done == ["sg"]
    background.stop(5)


def test_jobs_run_in_order_and_a_cancelled_queued_job_never_runs():
    background = Background()
    background.start()
    gate = threading.Event()
    ran: list[str] = []
    background.submit("a", "first", lambda: (gate.wait(5), ran.append("a")))
    background.submit("b", "second", lambda: ran.append("b"))
    background.submit("c", "third", lambda: ran.append("c"))
    background.cancel("b")
    gate.set()
    assert background.wait_idle(timeout=5)
    assert ran == ["a", "c"]
    background.stop(5)


def test_an_unavailable_neutron_is_retried_until_it_answers():
    background = Background()
    background.start()
    attempts: list[int] = []

    def flaky():
        attempts.append(1)
        if len(attempts) < 3:
            raise errors.BackendUnavailable("Neutron unreachable")

    background.submit("p", "update", flaky)
    assert background.wait_idle(timeout=10)
    assert len(attempts) == 3
    background.stop(5)


def test_draining_the_pool_drops_the_queued_return_of_a_port_it_deletes():
    """A container's port went back to the pool (its PUT queued), then the network is
    removed: the drain deletes that port, so the PUT must not run and be retried
    against 404s while DeleteNetwork waits for the queue (seen in CI: 60 s)."""
    from types import SimpleNamespace

    from kuryr.core.model import NetworkRecord
    from kuryr.core.pool import PortPool
    from kuryr.neutron.types import Port

    from .fakes import FakeBinder

    deleted: set[str] = set()
    updates: list[str] = []

    def update_port(port_id: str) -> None:
        updates.append(port_id)
        if port_id in deleted:
            raise errors.NotFound(f"port {port_id} could not be found")

    background = Background()
    background.start()
    neutron = SimpleNamespace(delete_port=deleted.add, update_port=update_port)
    pool = PortPool(neutron, FakeBinder(), background, "h", 0, "br-int",
                    owners=marks.DOCKER_OWNERS)  # type: ignore[arg-type]
    net = NetworkRecord(docker_id="d" * 64, neutron_id="n1", mtu=1450)
    port = Port(id="p1", network_id="n1", mac_address="fa:16:3e:00:00:01")
    pool._ready["n1"] = collections.deque([port])
    pool._known.add("n1")

    gate = threading.Event()
    background.submit("busy", "an earlier write", lambda: gate.wait(5))
    background.submit("p1", "return port p1 to the pool", lambda: update_port("p1"))
    pool.drain(net)
    gate.set()
    assert background.wait_idle(timeout=5)
    assert deleted == {"p1"}
    assert updates == [], "the return of a deleted port ran anyway"
    background.stop(5)

"""The watcher's list/watch/resume/re-list logic, fed recorded sequences."""

import pytest

from kuryr.k8s.events import EventType
from kuryr.k8s.watch import Gone, Listing, Store, WatchBackoff, Watcher


def ns(name, version, uid=None):
    return {"metadata": {"name": name, "resourceVersion": version, "uid": uid or name}}


class Recorded:
    """Answers the watcher's list and watch calls from scripts, and records them.

    ``watches`` is a list of (events, ending): the events one watch yields,
    then how it ends: None (the server closed it), Gone, or an exception."""

    def __init__(self, listings, watches):
        self.listings = list(listings)
        self.watches = list(watches)
        self.calls = []

    def list(self, kind):
        self.calls.append(("list", kind))
        return self.listings.pop(0)

    def watch(self, kind, resource_version):
        self.calls.append(("watch", resource_version))
        events, ending = self.watches.pop(0)
        yield from events
        if ending is not None:
            raise ending


def watcher(source):
    emitted = []
    store = Store("Namespace")
    w = Watcher("Namespace", source, store, emitted.append,
                delays=WatchBackoff(base=0.0, cap=0.0))
    return w, store, emitted


def summary(events):
    return [(e.type.value, e.obj["metadata"]["name"]) for e in events]


def test_list_then_watch_from_the_listed_version():
    source = Recorded([Listing([ns("a", "5"), ns("b", "6")], "10")],
                      [([("ADDED", ns("c", "11")), ("MODIFIED", ns("a", "12"))], None)])
    w, store, emitted = watcher(source)
    w.step()
    assert source.calls == [("list", "Namespace"), ("watch", "10")]
    assert summary(emitted) == [("ADDED", "a"), ("ADDED", "b"), ("ADDED", "c"),
                                ("MODIFIED", "a")]
    assert sorted(o["metadata"]["name"] for o in store.values()) == ["a", "b", "c"]
    assert w.synced.is_set()


def test_a_dropped_watch_resumes_from_the_last_version_seen_without_listing():
    source = Recorded([Listing([], "10")],
                      [([("ADDED", ns("a", "11"))], ConnectionResetError("dropped")),
                       ([("DELETED", ns("a", "13"))], None),
                       ([], None)])
    w, store, emitted = watcher(source)
    w.step()
    w.step()
    w.step()
    assert source.calls == [("list", "Namespace"), ("watch", "10"), ("watch", "11"),
                            ("watch", "13")]
    assert summary(emitted) == [("ADDED", "a"), ("DELETED", "a")]
    assert store.values() == []


def test_gone_lists_again_and_emits_what_changed_meanwhile():
    source = Recorded(
        [Listing([ns("a", "5"), ns("b", "6"), ns("c", "7")], "10"),
         # Meanwhile: a deleted, b unchanged, c modified, d added.
         Listing([ns("b", "6"), ns("c", "20"), ns("d", "21")], "30")],
        [([], Gone("too old")), ([], None)])
    w, _, emitted = watcher(source)
    w.step()
    emitted.clear()
    w.step()
    assert source.calls == [("list", "Namespace"), ("watch", "10"),
                            ("list", "Namespace"), ("watch", "30")]
    assert sorted(summary(emitted)) == [("ADDED", "d"), ("DELETED", "a"), ("MODIFIED", "c")]
    deleted = next(e for e in emitted if e.type is EventType.DELETED)
    assert deleted.obj["metadata"]["uid"] == "a"  # the last state seen


def test_a_failing_list_is_retried_and_a_watch_is_not_started_from_nothing():
    source = Recorded([Listing([ns("a", "5")], "10")], [([], None)])
    attempts = []

    def flaky_list(kind):
        attempts.append(kind)
        if len(attempts) < 3:
            raise ConnectionRefusedError("API server down")
        return Recorded.list(source, kind)

    source.list = flaky_list
    w, _, emitted = watcher(source)
    w.step()
    w.step()
    assert not w.synced.is_set()
    w.step()
    assert summary(emitted) == [("ADDED", "a")]
    assert source.calls[-1] == ("watch", "10")


def test_errors_back_off_longer_each_time_and_reset_after_a_success(monkeypatch):
    source = Recorded([Listing([], "1")],
                      [([], OSError("x")), ([], OSError("x")), ([], OSError("x")),
                       ([("ADDED", ns("a", "2"))], OSError("x"))])
    w, _, _ = watcher(source)
    w._delays = WatchBackoff(base=1.0, cap=3.0)
    waits = []
    monkeypatch.setattr(w._stop, "wait", waits.append)
    for _ in range(4):
        w.step()
    assert waits == [1.0, 2.0, 3.0, 1.0]


def test_bookmarks_move_the_version_but_emit_nothing():
    source = Recorded([Listing([], "1")],
                      [([("BOOKMARK", {"metadata": {"resourceVersion": "40"}})], None),
                       ([], None)])
    w, _, emitted = watcher(source)
    w.step()
    w.step()
    assert emitted == []
    assert source.calls[-1] == ("watch", "40")


@pytest.mark.parametrize("ending", [None, OSError("dropped")])
def test_stop_ends_run(ending):
    source = Recorded([Listing([], "1")], [([], ending)] * 100)
    w, _, _ = watcher(source)
    original = source.watch

    def watch_then_stop(kind, version):
        w._stop.set()
        return original(kind, version)

    source.watch = watch_then_stop
    w.run()  # returns: the stop flag is checked after each watch
    assert source.calls.count(("list", "Namespace")) == 1


class Quiet:
    """A server whose watches never send anything (a quiet cluster)."""

    def __init__(self):
        self.release = __import__("threading").Event()

    def list(self, kind):
        return Listing([], "1")

    def watch(self, kind, resource_version):
        self.release.wait(30)
        return iter(())


def test_a_stopping_controller_waits_for_its_watchers_together_not_in_turn():
    """Eight watchers on quiet streams once cost 8 x 2 s at SIGTERM."""
    import time
    from types import SimpleNamespace

    from kuryr.k8s.controller import WATCHERS_STOP_WAIT, Controller

    source = Quiet()
    watchers = [Watcher(f"Kind{i}", source, Store(f"Kind{i}"), lambda e: None,
                        delays=WatchBackoff(base=0.0, cap=0.0)) for i in range(8)]
    for w in watchers:
        w.start()
    try:
        started = time.monotonic()
        Controller.stop(SimpleNamespace(leadership=None, all_watchers=watchers, queues=[]))
        took = time.monotonic() - started
    finally:
        source.release.set()
    assert took < WATCHERS_STOP_WAIT * 2, took

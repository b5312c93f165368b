"""The network interfaces the stack made, so that `down` deletes those and no
other: a docker0, br-int or br-ex that was on the host before (the host's own
Docker, another Open vSwitch) stays.

`up` records a name when the stack's own daemon or code made the link (it did
not exist before); the record is ``Layout.links_file`` in the state directory,
so a `down` after a crash or a reboot still knows.
"""

from __future__ import annotations

import contextlib
import fcntl
from collections.abc import Callable, Iterable, Iterator

from pyroute2 import IPRoute

from kuryr.aio.layout import Layout
from kuryr.binding.netlink import delete_link, link_exists


def existing(names: Iterable[str], exists: Callable[[str], bool] = link_exists) -> set[str]:
    return {name for name in names if exists(name)}


def kind(name: str) -> str | None:
    """The link's kind as netlink reports it ("tun", "bridge", "veth", ...)."""
    with IPRoute() as ipr:
        for link in ipr.get_links(ifname=name):
            info = link.get_attr("IFLA_LINKINFO")
            return info.get_attr("IFLA_INFO_KIND") if info else None
    return None


def created(layout: Layout) -> list[str]:
    try:
        return layout.links_file.read_text().split()
    except FileNotFoundError:
        return []


def _write(layout: Layout, names: Iterable[str]) -> None:
    layout.links_file.write_text("".join(f"{name}\n" for name in sorted(set(names))))


@contextlib.contextmanager
def _locked(layout: Layout) -> Iterator[None]:
    """The record to oneself while it is read and rewritten: `up`, `vm up` and
    `host up` (several at once) each add and remove their own names."""
    layout.base.mkdir(parents=True, exist_ok=True)
    with layout.links_file.with_name(layout.links_file.name + ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def record(layout: Layout, names: Iterable[str]) -> None:
    """Note ``names`` as made by the stack (writes the record even when empty)."""
    with _locked(layout):
        _write(layout, [*created(layout), *names])


def record_new(layout: Layout, names: Iterable[str], before: set[str],
               exists: Callable[[str], bool] = link_exists) -> None:
    """Record those of ``names`` that exist now but were not in ``before``."""
    record(layout, existing(set(names) - before, exists))


def delete_created(layout: Layout, names: Iterable[str],
                   delete: Callable[[str], bool] = delete_link) -> list[str]:
    """Delete those of ``names`` the stack made; returns the ones that existed.

    Names the stack did not make are left alone, whatever they are.
    """
    with _locked(layout):
        ours = set(created(layout))
        mine = [name for name in names if name in ours]
        deleted = [name for name in mine if delete(name)]
        _write(layout, ours - set(mine))
    return deleted

"""What every part of the all-in-one stack (and of a simulated VM) is, and how
one is brought up: started when it has problems, then waited for until it has
none."""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from kuryr.aio import procs


class Component(Protocol):
    name: str

    @property
    def logs(self) -> list[Path]: ...

    def problems(self) -> list[str]: ...

    def up(self) -> None: ...

    def down(self) -> object: ...  # what it returns is not used


def say(message: str) -> None:
    print(f"kuryr-aio: {message}", flush=True)


def safe_problems(component: Component) -> list[str]:
    try:
        return component.problems()
    except Exception as exc:  # noqa: BLE001 - a failing probe is itself the answer
        return [f"{component.name}: check failed: {exc}"]


def healthy(component: Component) -> bool:
    return not safe_problems(component)


def bring_up(component: Component, log: Callable[[str], None]) -> None:
    if not safe_problems(component):
        return
    t0 = time.monotonic()
    where = ", ".join(str(p) for p in component.logs) or "-"
    log(f"starting {component.name} (logs: {where}) ...")
    try:
        component.up()
    except procs.StackError as exc:
        raise procs.StackError(f"{component.name}: {exc}") from exc
    # Some daemons need a moment after answering once (workers forking).
    procs.wait_for(functools.partial(healthy, component), 30, interval=0.5)
    left = safe_problems(component)
    if left:
        raise procs.StackError(f"{component.name} is still not healthy: {'; '.join(left)}")
    log(f"{component.name} up in {time.monotonic() - t0:.1f} s")

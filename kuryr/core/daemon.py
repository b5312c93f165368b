"""The one object that starts a Kuryr process's threads in order and stops them
in reverse (SIGTERM ends the web server first, then this)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

LOG = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Started:
    name: str
    stop: Callable[[], object]


class Daemon:
    def __init__(self) -> None:
        self._started: list[_Started] = []

    def start(self, name: str, start: Callable[[], object],
              stop: Callable[[], object]) -> None:
        start()
        self._started.append(_Started(name, stop))
        LOG.debug("started %s", name)

    def stop(self) -> None:
        stopped = []
        while self._started:
            item = self._started.pop()
            try:
                item.stop()
                stopped.append(item.name)
            except Exception as exc:  # noqa: BLE001 - stop the others regardless
                LOG.warning("stopping %s failed: %s", item.name, exc)
        LOG.info("stopped, in order: %s", ", ".join(stopped) or "nothing")

    @property
    def running(self) -> list[str]:
        return [item.name for item in self._started]

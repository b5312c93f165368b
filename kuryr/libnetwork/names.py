"""Container names for Neutron DNS, learnt from dockerd (Docker tells a remote
driver nothing about the container an endpoint is for).

dockerd's event stream says when a container joined a network ("connect",
after the driver's Join) and when it was renamed; the network's own record
(GET /networks/<id>) maps the container to its endpoint and name without
waiting on the container, which dockerd keeps locked while it starts.  The
core holds an endpoint's record write until its name comes (at most
``wait`` seconds), so dns_name rides in the same Neutron PUT as device_id.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import logging
import threading
import time
from collections.abc import Callable
from urllib.parse import quote

from kuryr.core.naming import Write, dns_label
from kuryr.localhttp import connection, http_request

LOG = logging.getLogger(__name__)
EVENTS = "/events?filters=" + quote(json.dumps(
    {"type": ["network", "container"], "event": ["connect", "rename"]}))
RECONNECT_AFTER = 2.0
REQUEST_TIMEOUT = 5.0
Rename = Callable[[str, str], None]  # (endpoint id, DNS label)


class DockerNames:
    """Owns two threads, started and stopped by the daemon: one follows dockerd's
    events, one records endpoints whose name did not come in time."""

    def __init__(self, docker_uri: str, wait: float = 5.0) -> None:
        self.docker_uri = docker_uri
        self.wait = wait
        self._waiting: dict[str, tuple[float, Write]] = {}
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._conn: http.client.HTTPConnection | None = None
        self._rename: Rename = lambda _endpoint, _label: None
        self._threads = [threading.Thread(target=self._follow, name="docker-events",
                                          daemon=True),
                         threading.Thread(target=self._expire, name="docker-names",
                                          daemon=True)]

    # -- the core's Naming ---------------------------------------------------------------
    def when_named(self, endpoint_id: str, write: Write) -> None:
        with self._lock:
            self._waiting[endpoint_id] = (time.monotonic() + self.wait, write)

    # -- lifecycle ------------------------------------------------------------------------
    def start(self, rename: Rename) -> None:
        """``rename``: how a later name reaches the port (PortLifecycle.name_endpoint)."""
        self._rename = rename
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        self._stopping.set()
        conn = self._conn
        if conn is not None and conn.sock is not None:
            with contextlib.suppress(OSError):
                conn.sock.shutdown(2)  # the reader's blocking read returns
        for thread in self._threads:
            thread.join(timeout=10)
        self._flush(everything=True)

    # -- threads --------------------------------------------------------------------------
    def _expire(self) -> None:
        while not self._stopping.wait(0.25):
            self._flush()

    def _flush(self, everything: bool = False) -> None:
        now = time.monotonic()
        with self._lock:
            due = [e for e, (deadline, _) in self._waiting.items()
                   if everything or deadline <= now]
            writes = [self._waiting.pop(e)[1] for e in due]
        for write in writes:
            write("")

    def _follow(self) -> None:
        warned = False
        while not self._stopping.is_set():
            try:
                self._read_events()
            except (OSError, ValueError, http.client.HTTPException) as exc:
                if not self._stopping.is_set() and not warned:
                    LOG.warning("container names for DNS: dockerd's events at %s: %s "
                                "(retrying; endpoints are recorded without a name meanwhile)",
                                self.docker_uri, exc)
                    warned = True
            self._stopping.wait(RECONNECT_AFTER)

    def _read_events(self) -> None:
        conn = connection(self.docker_uri, None)
        self._conn = conn
        try:
            conn.request("GET", EVENTS)
            response = conn.getresponse()
            if response.status != http.client.OK:
                raise ValueError(f"GET /events answered {response.status}")
            while not self._stopping.is_set():
                line = response.readline()
                if not line:
                    return  # dockerd went away
                if line.strip():
                    self._on_event(json.loads(line))
        finally:
            self._conn = None
            conn.close()

    # -- events ---------------------------------------------------------------------------
    def _on_event(self, event: dict) -> None:
        actor = event.get("Actor") or {}
        attributes = actor.get("Attributes") or {}
        try:
            if event.get("Type") == "network" and event.get("Action") == "connect":
                self._on_connect(str(actor.get("ID", "")), str(attributes.get("container", "")))
            elif event.get("Type") == "container" and event.get("Action") == "rename":
                self._on_rename(str(actor.get("ID", "")), str(attributes.get("name", "")))
        except (OSError, ValueError, http.client.HTTPException) as exc:
            LOG.info("container names for DNS: %s", exc)

    def _docker(self, path: str) -> dict:
        status, body = http_request(self.docker_uri, "GET", path, REQUEST_TIMEOUT, limit=None)
        if status != http.client.OK:
            raise ValueError(f"GET {path} answered {status}")
        found = json.loads(body)
        return found if isinstance(found, dict) else {}

    def _on_connect(self, network_id: str, container_id: str) -> None:
        if not network_id or not container_id:
            return
        entry = (self._docker(f"/networks/{quote(network_id)}").get("Containers") or {}).get(
            container_id) or {}
        endpoint_id, label = str(entry.get("EndpointID", "")), dns_label(
            str(entry.get("Name", "")))
        with self._lock:
            waiting = self._waiting.pop(endpoint_id, None)
        if waiting is not None:
            waiting[1](label)
        elif endpoint_id and label:
            self._rename(endpoint_id, label)  # recorded already (e.g. with --expose)

    def _on_rename(self, container_id: str, name: str) -> None:
        if not container_id or not dns_label(name):
            return
        networks = (self._docker(f"/containers/{quote(container_id)}/json").get(
            "NetworkSettings") or {}).get("Networks") or {}
        for settings in networks.values():
            endpoint_id = str((settings or {}).get("EndpointID", ""))
            if endpoint_id:
                self._rename(endpoint_id, dns_label(name))

"""The one place where Kuryr talks to Neutron.

A :class:`Neutron` wraps an openstacksdk connection built from the
``[neutron]`` section of kuryr.conf (keystoneauth options, a clouds.yaml
entry, or a no-auth endpoint) and counts every HTTP request it sends, so
benchmarks and tests can report requests per operation.
"""

from __future__ import annotations

import contextlib
import contextvars
import threading
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

import openstack
import requests
from keystoneauth1 import loading as ks_loading
from keystoneauth1 import session as ks_session
from openstack import connection as os_connection
from oslo_config import cfg

from kuryr.config import NEUTRON_GROUP


class NeutronConfigError(Exception):
    """kuryr.conf does not say how to reach Neutron."""


@dataclass
class RequestTally:
    """Requests seen while one operation ran, by HTTP method."""

    by_method: Counter[str] = field(default_factory=Counter)

    @property
    def total(self) -> int:
        return sum(self.by_method.values())

    @property
    def writes(self) -> int:
        return self.total - self.by_method.get("GET", 0)


class RequestCounter:
    """Counts HTTP requests globally and for the operation in progress.

    The current operation is carried in a context variable, so concurrent
    handlers (threads or tasks) each get their own tally.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.total: Counter[str] = Counter()
        self._current: contextvars.ContextVar[RequestTally | None] = contextvars.ContextVar(
            "kuryr_neutron_tally", default=None
        )

    def record(self, method: str) -> None:
        with self._lock:
            self.total[method] += 1
        tally = self._current.get()
        if tally is not None:
            tally.by_method[method] += 1

    @contextlib.contextmanager
    def operation(self) -> Iterator[RequestTally]:
        """Tally the requests made inside the ``with`` block."""
        tally = RequestTally()
        token = self._current.set(tally)
        try:
            yield tally
        finally:
            self._current.reset(token)

    def response_hook(self, response: requests.Response, *args: object, **kwargs: object) -> None:
        self.record(response.request.method or "?")


def _http_session(counter: RequestCounter) -> requests.Session:
    http = requests.Session()
    http.hooks["response"].append(counter.response_hook)
    return http


def _keystone_session(conf: cfg.ConfigOpts, counter: RequestCounter) -> ks_session.Session:
    group = conf[NEUTRON_GROUP]
    if not group.auth_type:
        raise NeutronConfigError(
            "[neutron] auth_type is not set in kuryr.conf: use 'password', "
            "'v3applicationcredential', or 'none' with 'endpoint = http://HOST:9696'"
        )
    auth = ks_loading.load_auth_from_conf_options(conf, NEUTRON_GROUP)
    sess = ks_loading.load_session_from_conf_options(
        conf, NEUTRON_GROUP, auth=auth, session=_http_session(counter)
    )
    sess.timeout = group.request_timeout
    return sess


def connect(conf: cfg.ConfigOpts, counter: RequestCounter | None = None) -> Neutron:
    """Build a Neutron client from kuryr.conf's [neutron] section."""
    counter = counter or RequestCounter()
    group = conf[NEUTRON_GROUP]
    if group.cloud:
        conn = openstack.connect(cloud=group.cloud)
        conn.session.session.hooks["response"].append(counter.response_hook)
        conn.session.timeout = group.request_timeout
    else:
        sess = _keystone_session(conf, counter)
        overrides = {}
        if group.endpoint_override:
            overrides["network_endpoint_override"] = group.endpoint_override
        conn = os_connection.Connection(
            session=sess,
            region_name=group.region_name,
            network_api_version="2",
            **overrides,
        )
    return Neutron(conn, counter)


def connect_endpoint(endpoint: str, counter: RequestCounter | None = None) -> Neutron:
    """A no-auth client for a Neutron run with ``auth_strategy = noauth``."""
    counter = counter or RequestCounter()
    conn = openstack.connect(
        auth_type="none",
        auth={"endpoint": endpoint},
    )
    conn.session.session.hooks["response"].append(counter.response_hook)
    return Neutron(conn, counter)


class Neutron:
    """Neutron resources as Kuryr uses them.  Holds no Docker knowledge."""

    def __init__(self, conn: os_connection.Connection, counter: RequestCounter) -> None:
        self.conn = conn
        self.counter = counter

    @property
    def api(self):  # noqa: ANN201 - openstacksdk's network proxy has no public type
        return self.conn.network

    def extensions(self) -> set[str]:
        """Aliases of the API extensions this Neutron offers."""
        return {ext.alias for ext in self.api.extensions()}

    def close(self) -> None:
        self.conn.close()

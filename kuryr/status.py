"""`kuryr status`: what is wrong with Kuryr on this host, in plain words.

Each check looks at one thing Kuryr needs (Neutron, Open vSwitch, the plugin's
socket and Docker) and returns a :class:`Result` whose message names the thing
and, when it fails, what to do.  Every check is bounded in time: a status
command that hangs on the very thing that is broken would tell nobody anything.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import re
import socket
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path
from urllib.parse import urlparse

import requests
from keystoneauth1 import exceptions as ks_exc
from keystoneauth1 import session as ks_session
from oslo_config import cfg

from kuryr.config import NEUTRON_GROUP
from kuryr.errors import KuryrError
from kuryr.localhttp import connect_unix, http_request

TIMEOUT = 5.0
PLUGIN_NAME = "kuryr"  # the name users give to `docker network create -d`
# Where dockerd looks for a plugin by name (github.com/moby/moby pkg/plugins/discovery.go).
DOCKER_SOCKET_DIR = Path("/run/docker/plugins")
DOCKER_SPEC_DIRS = (Path("/etc/docker/plugins"), Path("/usr/lib/docker/plugins"))


@dataclass(frozen=True)
class Result:
    """The outcome of one check: ``name`` is the thing checked."""

    name: str
    ok: bool
    message: str

    def line(self) -> str:
        return f"{'OK' if self.ok else 'FAIL':6}{self.name}: {self.message}"


# -- Neutron -----------------------------------------------------------------

def check_neutron(conf: cfg.ConfigOpts, timeout: float = TIMEOUT) -> Result:
    """Keystone (when used) accepts the credentials and Neutron answers one GET."""
    from kuryr.neutron.client import NeutronConfigError, connect

    try:
        neutron = connect(conf)
    except NeutronConfigError as exc:
        return Result("neutron", False, str(exc))
    except Exception as exc:  # noqa: BLE001 - e.g. an unknown clouds.yaml entry
        return Result("neutron", False, f"cannot build the Neutron client from [neutron]: {exc}")
    neutron.conn.session.timeout = timeout
    try:
        if _uses_keystone(conf):
            problem = _keystone_problem(conf, neutron.conn.session, timeout)
            if problem:
                return Result("neutron", False, problem)
        try:
            count = len(neutron.extensions())
        except Exception as exc:  # noqa: BLE001 - every failure becomes a sentence
            return Result("neutron", False, _neutron_problem(conf, exc, timeout))
    finally:
        neutron.close()
    credentials = "accepts Kuryr's credentials" if _uses_keystone(conf) else "answers"
    return Result("neutron", True, f"Neutron at {_neutron_location(conf)} {credentials} "
                  f"({count} API extensions)")


def _opt(conf: cfg.ConfigOpts, name: str) -> str | None:
    """A [neutron] option, or None when the auth plugin in use does not have it."""
    try:
        return conf[NEUTRON_GROUP][name]
    except cfg.NoSuchOptError:
        return None


def _uses_keystone(conf: cfg.ConfigOpts) -> bool:
    group = conf[NEUTRON_GROUP]
    return not group.cloud and group.auth_type not in (None, "none", "noauth")


def _neutron_location(conf: cfg.ConfigOpts) -> str:
    group = conf[NEUTRON_GROUP]
    if group.cloud:
        return f"cloud {group.cloud!r} of clouds.yaml"
    endpoint = group.endpoint_override or _opt(conf, "endpoint")
    if endpoint:
        return endpoint
    return f"the catalog of Keystone {_opt(conf, 'auth_url')}"


def _who(conf: cfg.ConfigOpts) -> tuple[str, str]:
    """Whose credentials these are, and the option most likely to be wrong."""
    app_cred = _opt(conf, "application_credential_id") or _opt(
        conf, "application_credential_name")
    if app_cred:
        return f"application credential {app_cred}", "application_credential_secret"
    return f"user {_opt(conf, 'username') or _opt(conf, 'user_id')}", "password"


def _keystone_problem(conf: cfg.ConfigOpts, session: ks_session.Session,
                      timeout: float) -> str | None:
    """Fetch a token alone first, so a Keystone failure is not blamed on Neutron."""
    auth_url = _opt(conf, "auth_url")
    try:
        session.get_token()
    except ks_exc.HttpError as exc:
        if exc.http_status in (401, 403):
            who, option = _who(conf)
            return (f"Keystone at {auth_url} refused the credentials of {who} "
                    f"({exc.http_status}): check [neutron] {option}")
        return f"Keystone at {auth_url} answered with an error ({exc.http_status}): {exc}"
    except Exception as exc:  # noqa: BLE001 - connection failures, discovery, plugin errors
        reason = _unreachable_reason(auth_url or "", exc, timeout)
        return (f"Keystone at {auth_url} is unreachable: {reason} "
                f"(check [neutron] auth_url)")
    return None


def _neutron_problem(conf: cfg.ConfigOpts, exc: BaseException, timeout: float) -> str:
    where = _neutron_location(conf)
    status = _http_status(exc)
    if status in (401, 403):
        if not _uses_keystone(conf) and not conf[NEUTRON_GROUP].cloud:
            return (f"Neutron at {where} refused the request ({status}): it wants credentials "
                    f"but [neutron] auth_type is none; set auth_type = password and the "
                    f"Keystone options")
        who, option = _who(conf)
        return (f"Neutron refused the credentials of {who} ({status}): check [neutron] "
                f"{option} and the user's role in [neutron] project_name")
    if status == HTTPStatus.NOT_FOUND:
        return (f"Neutron at {where} has no /v2.0/extensions (404): is [neutron] endpoint "
                f"the Neutron API, e.g. http://HOST:9696?")
    if any(isinstance(link, ks_exc.CatalogException) for link in _chain(exc)):
        return (f"Keystone {_opt(conf, 'auth_url')} lists no network endpoint: set "
                f"[neutron] endpoint_override = http://HOST:9696")
    if status is not None:
        return (f"Neutron at {where} answered with an error ({status}): "
                f"{_first_line(exc)}; see neutron-server's log")
    return f"Neutron at {where} is unreachable: {_unreachable_reason(where, exc, timeout)}"


def _unreachable_reason(url: str, exc: BaseException, timeout: float) -> str:
    """Why ``url`` cannot be reached, even when the library lost the reason.

    openstacksdk's version discovery (used with endpoint_override) replaces
    "connection refused" with "Unable to find a version discovery document";
    connecting again ourselves gets the system's word back.
    """
    if _system_reason(exc) is not None or not url.startswith(("http://", "https://")):
        return _reason(exc, timeout)
    parsed = urlparse(url)
    default_port = 443 if parsed.scheme == "https" else 80
    try:
        socket.create_connection((parsed.hostname, parsed.port or default_port),
                                 timeout).close()
    except OSError as probe:
        return _reason(probe, timeout)
    return _reason(exc, timeout)


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """The exception and everything it wraps (causes, contexts, urllib3 reasons)."""
    seen: set[int] = set()
    link: BaseException | None = exc
    while link is not None and id(link) not in seen:
        seen.add(id(link))
        yield link
        reason = getattr(link, "reason", None)
        link = link.__cause__ or link.__context__ or (
            reason if isinstance(reason, BaseException) else None)


def _http_status(exc: BaseException) -> int | None:
    for link in _chain(exc):
        status = getattr(link, "status_code", None) or getattr(link, "http_status", None)
        if isinstance(status, int):
            return status
    return None


def _reason(exc: BaseException, timeout: float) -> str:
    """The system's word for a failure ("connection refused"), not a library's traceback."""
    reason = _system_reason(exc)
    if reason is not None:
        return reason
    if any(isinstance(link, TimeoutError | ks_exc.ConnectTimeout | requests.Timeout)
           for link in _chain(exc)):
        return f"no answer within {timeout:g} s"
    # Kuryr's own errors prefix what was being done; the cause says what went wrong.
    return _first_line(exc.__cause__ if isinstance(exc, KuryrError) and exc.__cause__ else exc)


def _system_reason(exc: BaseException) -> str | None:
    for link in _chain(exc):
        if isinstance(link, OSError) and link.errno is not None and link.strerror:
            return link.strerror.lower()
    return None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]


# -- Open vSwitch --------------------------------------------------------------

def check_ovs(conf: cfg.ConfigOpts, timeout: float = TIMEOUT) -> Result:
    """OVSDB answers and has the bridge container ports are plugged into."""
    from kuryr.binding.ovs import OVS

    endpoint = conf.binding.ovsdb_connection
    bridge = conf.binding.ovs_bridge
    problem = _ovsdb_unreachable(endpoint, timeout)
    if problem:
        return Result("ovs", False, f"Open vSwitch is unreachable at {endpoint}: {problem} "
                      f"(is ovsdb-server running? check [binding] ovsdb_connection)")
    ovs = OVS(endpoint, timeout=timeout)
    try:
        exists = ovs.bridge_exists(bridge)
    except Exception as exc:  # noqa: BLE001 - ovsdbapp raises bare Exceptions
        return Result("ovs", False, f"Open vSwitch at {endpoint} did not answer: "
                      f"{_first_line(exc)}")
    finally:
        with contextlib.suppress(Exception):
            ovs.api.ovsdb_connection.stop()
    if not exists:
        return Result("ovs", False, f"OVS bridge {bridge} does not exist (ovsdb {endpoint}): "
                      "create it, or fix [binding] ovs_bridge")
    return Result("ovs", True, f"OVS bridge {bridge} exists (ovsdb {endpoint})")


def _ovsdb_unreachable(endpoint: str, timeout: float) -> str | None:
    """Why none of the OVSDB endpoints accepts a connection, or None.

    ovsdbapp only says "Could not retrieve schema"; a plain connect says why.
    """
    problems = []
    for target in endpoint.split(","):
        kind, _, rest = target.strip().partition(":")
        try:
            if kind == "unix":
                if not (rest and Path(rest).exists()):
                    problems.append(f"socket {rest} does not exist")
                    continue
                connect_unix(rest, timeout).close()
            elif kind in ("tcp", "ssl"):
                host, _, port = rest.rpartition(":")
                socket.create_connection((host.strip("[]"), int(port)), timeout).close()
            # Other kinds (punix:, ptcp:) make ovsdb-server connect to us: nothing to probe.
            return None
        except (OSError, ValueError) as exc:
            problems.append(_reason(exc, timeout))
    return problems[0] if problems else None


# -- the plugin ------------------------------------------------------------------

def check_plugin_discoverable(conf: cfg.ConfigOpts, socket_dir: Path | None = None,
                              spec_dirs: Sequence[Path] | None = None) -> Result:
    """Docker would find the plugin named kuryr at kuryr_uri (default: Docker's own dirs)."""
    socket_dir = DOCKER_SOCKET_DIR if socket_dir is None else socket_dir
    spec_dirs = DOCKER_SPEC_DIRS if spec_dirs is None else spec_dirs
    uri = conf.kuryr_uri
    parsed = urlparse(uri)
    if parsed.scheme == "unix":
        path = Path(parsed.path)
        if any(_same_path(path, place) for place in _docker_socket_places(socket_dir)):
            return Result("plugin-discovery", True, f"Docker finds plugin {PLUGIN_NAME} at {path}")
        spec = _spec_pointing_at(uri, spec_dirs)
        if spec:
            return Result("plugin-discovery", True, f"Docker finds plugin {PLUGIN_NAME} "
                          f"through {spec}")
        if _is_managed_plugin_socket(path, socket_dir):
            return Result("plugin-discovery", True, f"{path} is a managed plugin's socket "
                          "(Docker knows the plugin by its name: `docker plugin ls`)")
        dirs = ", ".join(str(d) for d in spec_dirs)
        return Result("plugin-discovery", False,
                      f"plugin socket {path} is not where Docker looks ({socket_dir}/"
                      f"{PLUGIN_NAME}.sock or a {PLUGIN_NAME}.spec file in {dirs} pointing at "
                      f"it): set [DEFAULT] kuryr_uri = unix://{socket_dir}/{PLUGIN_NAME}.sock")
    if parsed.scheme in ("http", "tcp"):
        return _http_plugin_discoverable(conf, spec_dirs)
    return Result("plugin-discovery", False,
                  f"[DEFAULT] kuryr_uri {uri} must be unix:///path.sock or http://HOST:PORT")


def _http_plugin_discoverable(conf: cfg.ConfigOpts, spec_dirs: Sequence[Path]) -> Result:
    uri = conf.kuryr_uri
    spec = _spec_pointing_at(uri, spec_dirs)
    if spec:
        return Result("plugin-discovery", True, f"Docker finds plugin {PLUGIN_NAME} "
                      f"through {spec}")
    spec_dir = Path(conf.plugin_spec_dir)
    if not any(_same_path(spec_dir, d) for d in spec_dirs):
        dirs = ", ".join(str(d) for d in spec_dirs)
        return Result("plugin-discovery", False,
                      f"plugin_spec_dir {spec_dir} is not where Docker reads spec files "
                      f"({dirs}): set [DEFAULT] plugin_spec_dir = {spec_dirs[0]}")
    return Result("plugin-discovery", False,
                  f"no spec file {spec_dir / (PLUGIN_NAME + '.spec')} points at {uri} "
                  f"(`kuryr serve` writes it when it starts: is it running?)")


def _is_managed_plugin_socket(path: Path, socket_dir: Path) -> bool:
    """<socket_dir>/<64-hex plugin id>/<socket>: where dockerd puts a managed
    (v2) plugin's socket; it finds such a plugin by its reference."""
    parent = path.parent
    return (_same_path(parent.parent, socket_dir)
            and re.fullmatch(r"[0-9a-f]{64}", parent.name) is not None)


def _docker_socket_places(socket_dir: Path) -> list[Path]:
    return [socket_dir / f"{PLUGIN_NAME}.sock", socket_dir / PLUGIN_NAME / f"{PLUGIN_NAME}.sock"]


def _same_path(a: Path, b: Path) -> bool:
    # /var/run is a link to /run on most hosts; compare what the kernel would open.
    return os.path.realpath(a) == os.path.realpath(b)


def _spec_pointing_at(uri: str, spec_dirs: Sequence[Path]) -> Path | None:
    """The spec file Docker would read for the plugin, when it points at ``uri``."""
    for spec_dir in spec_dirs:
        for spec in (spec_dir / f"{PLUGIN_NAME}.spec", spec_dir / f"{PLUGIN_NAME}.json"):
            address = _spec_address(spec)
            if address is None:
                continue
            # Docker stops at the first spec file it finds, right or wrong.
            return spec if _same_address(address, uri) else None
    return None


def _spec_address(spec: Path) -> str | None:
    try:
        text = spec.read_text()
    except OSError:
        return None
    if spec.suffix == ".json":
        try:
            return str(json.loads(text).get("Addr", ""))
        except (ValueError, AttributeError):
            return ""
    return text.strip()


def _same_address(a: str, b: str) -> bool:
    pa, pb = urlparse(a), urlparse(b)
    if pa.scheme == "unix" or pb.scheme == "unix":
        return pa.scheme == pb.scheme and _same_path(Path(pa.path), Path(pb.path))
    # Docker treats tcp:// and http:// spec addresses alike.
    return (pa.hostname, pa.port) == (pb.hostname, pb.port)


def check_plugin_answers(conf: cfg.ConfigOpts, timeout: float = TIMEOUT) -> Result:
    """The plugin answers the first call dockerd makes, POST /Plugin.Activate."""
    uri = conf.kuryr_uri
    try:
        status, body = http_request(uri, "POST", "/Plugin.Activate", timeout)
    except (OSError, ValueError, http.client.HTTPException) as exc:
        return Result("plugin", False, f"the plugin does not answer on {uri}: "
                      f"{_reason(exc, timeout)} (is `kuryr serve` running?)")
    if status != HTTPStatus.OK or "NetworkDriver" not in body:
        return Result("plugin", False, f"something other than Kuryr answers on {uri}: "
                      f"POST /Plugin.Activate gave {status} {body[:80]!r}")
    return Result("plugin", True, f"the plugin answers on {uri}")


# -- Docker --------------------------------------------------------------------

def check_docker(conf: cfg.ConfigOpts, timeout: float = TIMEOUT) -> Result:
    """dockerd answers GET /_ping at docker_uri."""
    uri = conf.docker_uri
    try:
        status, body = http_request(uri, "GET", "/_ping", timeout)
    except (OSError, ValueError, http.client.HTTPException) as exc:
        return Result("docker", False, f"dockerd is not reachable at {uri}: "
                      f"{_reason(exc, timeout)} (check [DEFAULT] docker_uri)")
    if status != HTTPStatus.OK:
        return Result("docker", False, f"dockerd at {uri} answered {status} to /_ping: "
                      f"{body[:80]!r}")
    return Result("docker", True, f"dockerd answers at {uri}")


# -- Kubernetes ------------------------------------------------------------------

def kubernetes_configured(conf: cfg.ConfigOpts) -> bool:
    """A host of Kuryr for Kubernetes: its kubeconfig is set, or a CNI daemon's
    socket is where [kubernetes] daemon_socket says."""
    return bool(conf.kubernetes.kubeconfig) or Path(conf.kubernetes.daemon_socket).exists()


def check_cni_daemon(conf: cfg.ConfigOpts, timeout: float = TIMEOUT) -> Result:
    """The node daemon answers kuryr-cni's STATUS over its socket."""
    path = conf.kubernetes.daemon_socket
    try:
        status, body = http_request(f"unix://{path}", "POST", "/v1/status", timeout,
                                    body=b'{"command": "STATUS"}')
    except (OSError, ValueError, http.client.HTTPException) as exc:
        return Result("cni-daemon", False, f"the CNI daemon does not answer on {path}: "
                      f"{_reason(exc, timeout)} (is `kuryr cni-daemon` running?)")
    if status != HTTPStatus.OK:
        return Result("cni-daemon", False, f"the CNI daemon on {path} is not ready: "
                      f"{status} {body[:120]!r}")
    return Result("cni-daemon", True, f"the CNI daemon answers on {path}")


def check_controller(conf: cfg.ConfigOpts) -> Result:
    """The controller renewed its Lease (kube-system/kuryr-controller) lately."""
    from kuryr.k8s import api
    from kuryr.k8s.controller import LEASE_DURATION

    try:
        age = api.KubeApi(api.connect(conf)).lease_age()
    except Exception as exc:  # noqa: BLE001 - every failure becomes a sentence
        return Result("k8s-controller", False, "cannot read the controller's Lease from "
                      f"the API server ([kubernetes] kubeconfig): {_first_line(exc)}")
    where = f"{api.LEASE_NAMESPACE}/{api.LEASE_NAME}"
    if age is None:
        return Result("k8s-controller", False, f"no Lease {where}: the controller "
                      "(`kuryr k8s-controller`) never ran in this cluster")
    holder, seconds = age
    if seconds > LEASE_DURATION:
        return Result("k8s-controller", False, f"the controller on {holder} last renewed "
                      f"{where} {seconds:.0f} s ago (is `kuryr k8s-controller` running?)")
    return Result("k8s-controller", True, f"the controller on {holder} renewed {where} "
                  f"{seconds:.0f} s ago")


# -- all together ----------------------------------------------------------------

def checks_for(conf: cfg.ConfigOpts) -> list[tuple[str, Callable[[], Result]]]:
    """The checks that apply to this configuration, by name."""
    checks: list[tuple[str, Callable[[], Result]]] = [("neutron", lambda: check_neutron(conf))]
    # Only the veth driver plugs into this host's switch; nested drivers use the VM's NIC.
    if conf.port_driver == "veth":
        checks.append(("ovs", lambda: check_ovs(conf)))
    # An empty kuryr_uri: no Docker plugin on this host (a Kubernetes node's pod).
    if conf.kuryr_uri:
        checks += [
            ("plugin-discovery", lambda: check_plugin_discoverable(conf)),
            ("plugin", lambda: check_plugin_answers(conf)),
            ("docker", lambda: check_docker(conf)),
        ]
    if kubernetes_configured(conf):
        checks += [("cni-daemon", lambda: check_cni_daemon(conf)),
                   ("k8s-controller", lambda: check_controller(conf))]
    return checks


def bounded(name: str, check: Callable[[], Result], deadline: float) -> Result:
    """Run ``check`` for at most ``deadline`` seconds.

    Client libraries can block past their own timeouts (a half-open OVSDB
    connection, Keystone discovery); the daemon thread is abandoned then.
    """
    results: list[Result] = []

    def run() -> None:
        try:
            results.append(check())
        except Exception as exc:  # noqa: BLE001 - a check's bug must not hide the others
            results.append(Result(name, False, f"the check failed: {_first_line(exc)}"))

    thread = threading.Thread(target=run, name=f"kuryr-status-{name}", daemon=True)
    thread.start()
    thread.join(deadline)
    if not results:
        return Result(name, False, f"no answer within {deadline:g} s")
    return results[0]


def run_checks(conf: cfg.ConfigOpts, deadline: float = 3 * TIMEOUT) -> Iterator[Result]:
    """Each applicable check's result, as soon as it is known."""
    for name, check in checks_for(conf):
        yield bounded(name, check, deadline)


def main(conf: cfg.ConfigOpts) -> int:
    """Print one line per check; 0 when all are OK, else 1."""
    ok = True
    for result in run_checks(conf):
        # Printed as each check ends: a slow check should not hide the finished ones.
        print(result.line(), flush=True)
        ok = ok and result.ok
    return 0 if ok else 1

"""`kuryr status` checks against real local sockets and HTTP servers."""

from __future__ import annotations

import contextlib
import http.server
import json
import os
import socket
import socketserver
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from kuryr import config, status

EXTENSIONS = {"extensions": [{"alias": "tag", "name": "Tag support", "description": "",
                              "links": [], "updated": ""}]}
ACTIVATE = {"Implements": ["NetworkDriver", "IpamDriver"]}


def keystone_version(base: str) -> dict:
    return {"version": {"id": "v3.14", "status": "stable", "media-types": [],
                        "links": [{"rel": "self", "href": f"{base}/v3/"}]}}


def handler(routes: dict[tuple[str, str], tuple[int, object]]) -> type:
    """A request handler answering ``routes[(method, path)] = (status, body)``.

    The body is JSON, a string, or a function of the server's base URL.
    """

    class Handler(http.server.BaseHTTPRequestHandler):
        def _answer(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            code, body = routes.get((self.command, self.path.split("?")[0]), (404, {}))
            if callable(body):
                body = body(f"http://127.0.0.1:{self.server.server_address[1]}")
            data = body.encode() if isinstance(body, str) else json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = _answer  # noqa: N815 - BaseHTTPRequestHandler's names

        def log_message(self, *args: object) -> None:
            pass

    return Handler


@contextlib.contextmanager
def serving(server: socketserver.BaseServer):
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def tcp_server(routes: dict) -> contextlib.AbstractContextManager:
    return serving(http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler(routes)))


def unix_server(path: Path, routes: dict) -> contextlib.AbstractContextManager:
    return serving(socketserver.ThreadingUnixStreamServer(str(path), handler(routes)))


def closed_port() -> int:
    """A loopback port nothing listens on (it was free a moment ago)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def short_dir():
    # Unix socket paths are limited to 107 bytes; pytest's tmp_path can be longer.
    with tempfile.TemporaryDirectory(prefix="ks-", dir="/tmp") as path:
        yield Path(path)


@pytest.fixture
def load(tmp_path):
    def load(text: str) -> config.cfg.ConfigOpts:
        path = tmp_path / "kuryr.conf"
        path.write_text(text)
        return config.load([], [str(path)])

    return load


def no_auth(endpoint: str, extra: str = "") -> str:
    return f"{extra}\n[neutron]\nauth_type = none\nendpoint = {endpoint}\n"


def password_auth(auth_url: str) -> str:
    return (f"[neutron]\nauth_type = password\nauth_url = {auth_url}\nusername = kuryr\n"
            "password = wrong\nproject_name = service\nuser_domain_name = Default\n"
            "project_domain_name = Default\n")


def test_result_line_starts_with_ok_or_fail_and_the_name():
    assert status.Result("docker", True, "fine").line() == "OK    docker: fine"
    assert status.Result("docker", False, "down").line() == "FAIL  docker: down"


# -- Neutron -------------------------------------------------------------------

def test_neutron_answering_is_ok(load):
    with tcp_server({("GET", "/v2.0/extensions"): (200, EXTENSIONS)}) as server:
        url = f"http://127.0.0.1:{server.server_port}"
        result = status.check_neutron(load(no_auth(url)))
    assert result.ok, result.message
    assert result.message == f"Neutron at {url} answers (1 API extensions)"


def test_neutron_on_a_closed_port_is_unreachable(load):
    url = f"http://127.0.0.1:{closed_port()}"
    result = status.check_neutron(load(no_auth(url)))
    assert not result.ok
    assert result.message == f"Neutron at {url} is unreachable: connection refused"


def test_neutron_endpoint_override_on_a_closed_port_is_unreachable(load):
    # With endpoint_override the SDK's version discovery hides "connection refused".
    url = f"http://127.0.0.1:{closed_port()}"
    result = status.check_neutron(load(no_auth(url) + f"endpoint_override = {url}\n"))
    assert result.message == f"Neutron at {url} is unreachable: connection refused"


def test_neutron_that_never_answers_times_out(load):
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)  # the kernel accepts connections; nobody answers them
        url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        result = status.check_neutron(load(no_auth(url)), timeout=0.5)
    assert result.message == f"Neutron at {url} is unreachable: no answer within 0.5 s"


def test_neutron_wanting_credentials_without_auth_says_so(load):
    denied = (401, {"error": {"message": "authentication required", "code": 401}})
    with tcp_server({("GET", "/v2.0/extensions"): denied}) as server:
        url = f"http://127.0.0.1:{server.server_port}"
        result = status.check_neutron(load(no_auth(url)))
    assert not result.ok
    assert f"Neutron at {url} refused the request (401)" in result.message
    assert "auth_type is none" in result.message


def test_neutron_error_points_at_its_log(load):
    broken = (500, {"NeutronError": {"message": "db gone", "type": "x", "detail": ""}})
    with tcp_server({("GET", "/v2.0/extensions"): broken}) as server:
        result = status.check_neutron(load(no_auth(f"http://127.0.0.1:{server.server_port}")))
    assert not result.ok
    assert "answered with an error (500)" in result.message
    assert "neutron-server's log" in result.message


def test_keystone_refusing_the_password_names_user_and_option(load):
    routes = {("GET", "/v3"): (200, keystone_version),
              ("POST", "/v3/auth/tokens"): (401, {"error": {"code": 401, "message": "no"}})}
    with tcp_server(routes) as server:
        auth_url = f"http://127.0.0.1:{server.server_port}/v3"
        result = status.check_neutron(load(password_auth(auth_url)))
    assert not result.ok
    assert result.message == (f"Keystone at {auth_url} refused the credentials of user kuryr "
                              "(401): check [neutron] password")


def test_keystone_unreachable_names_auth_url(load):
    auth_url = f"http://127.0.0.1:{closed_port()}/v3"
    result = status.check_neutron(load(password_auth(auth_url)))
    assert not result.ok
    assert result.message.startswith(f"Keystone at {auth_url} is unreachable: ")
    assert "[neutron] auth_url" in result.message


def test_missing_auth_type_is_reported_not_raised(load):
    result = status.check_neutron(load("[neutron]\n"))
    assert not result.ok
    assert "auth_type" in result.message


# -- Open vSwitch --------------------------------------------------------------

def test_ovsdb_socket_missing(load, short_dir):
    sock = short_dir / "db.sock"
    result = status.check_ovs(load(f"[binding]\novsdb_connection = unix:{sock}\n"))
    assert not result.ok
    assert f"Open vSwitch is unreachable at unix:{sock}: socket {sock} does not exist" \
        in result.message


def test_ovsdb_closed_tcp_port(load):
    endpoint = f"tcp:127.0.0.1:{closed_port()}"
    result = status.check_ovs(load(f"[binding]\novsdb_connection = {endpoint}\n"))
    assert not result.ok
    assert f"unreachable at {endpoint}: connection refused" in result.message


def test_ovs_is_only_checked_for_the_veth_driver(load):
    assert "ovs" in [name for name, _ in status.checks_for(load(""))]
    nested = load("[DEFAULT]\nport_driver = nested-vlan\n")
    assert "ovs" not in [name for name, _ in status.checks_for(nested)]


# -- where Docker looks for the plugin ---------------------------------------------

@pytest.fixture
def docker_dirs(short_dir):
    socket_dir, spec_dirs = short_dir / "run", (short_dir / "etc", short_dir / "lib")
    for path in (socket_dir, *spec_dirs):
        path.mkdir()
    return socket_dir, spec_dirs


def discoverable(conf: config.cfg.ConfigOpts, docker_dirs: tuple) -> status.Result:
    socket_dir, spec_dirs = docker_dirs
    return status.check_plugin_discoverable(conf, socket_dir=socket_dir, spec_dirs=spec_dirs)


def test_socket_in_dockers_plugin_dir_is_found(load, docker_dirs):
    sock = docker_dirs[0] / "kuryr.sock"
    result = discoverable(load(f"[DEFAULT]\nkuryr_uri = unix://{sock}\n"), docker_dirs)
    assert result.ok
    assert str(sock) in result.message


def test_socket_elsewhere_is_not_found(load, docker_dirs, short_dir):
    sock = short_dir / "kuryr.sock"
    result = discoverable(load(f"[DEFAULT]\nkuryr_uri = unix://{sock}\n"), docker_dirs)
    assert not result.ok
    assert result.message.startswith(f"plugin socket {sock} is not where Docker looks")


def test_a_managed_plugins_socket_is_found_by_its_plugin_id_directory(load, docker_dirs):
    sock = docker_dirs[0] / ("0123456789abcdef" * 4) / "kuryr.sock"
    result = discoverable(load(f"[DEFAULT]\nkuryr_uri = unix://{sock}\n"), docker_dirs)
    assert result.ok
    assert "managed plugin" in result.message


def test_a_directory_that_is_no_plugin_id_is_still_not_where_docker_looks(load, docker_dirs):
    sock = docker_dirs[0] / "not-a-plugin-id" / "kuryr.sock"
    assert not discoverable(load(f"[DEFAULT]\nkuryr_uri = unix://{sock}\n"), docker_dirs).ok


def test_socket_elsewhere_with_a_spec_file_is_found(load, docker_dirs, short_dir):
    sock = short_dir / "kuryr.sock"
    spec = docker_dirs[1][1] / "kuryr.spec"
    spec.write_text(f"unix://{sock}\n")
    result = discoverable(load(f"[DEFAULT]\nkuryr_uri = unix://{sock}\n"), docker_dirs)
    assert result.ok
    assert str(spec) in result.message


def test_http_plugin_needs_its_spec_file(load, docker_dirs):
    spec_dir = docker_dirs[1][0]
    conf = load(f"[DEFAULT]\nkuryr_uri = http://127.0.0.1:23750\nplugin_spec_dir = {spec_dir}\n")
    missing = discoverable(conf, docker_dirs)
    assert not missing.ok
    assert f"no spec file {spec_dir}/kuryr.spec" in missing.message
    (spec_dir / "kuryr.spec").write_text("http://127.0.0.1:23750\n")
    assert discoverable(conf, docker_dirs).ok


def test_spec_file_pointing_elsewhere_is_not_ours(load, docker_dirs):
    spec_dir = docker_dirs[1][0]
    (spec_dir / "kuryr.json").write_text(json.dumps({"Addr": "tcp://127.0.0.1:1"}))
    conf = load(f"[DEFAULT]\nkuryr_uri = http://127.0.0.1:23750\nplugin_spec_dir = {spec_dir}\n")
    assert not discoverable(conf, docker_dirs).ok


def test_spec_dir_docker_does_not_read(load, docker_dirs, short_dir):
    conf = load(f"[DEFAULT]\nkuryr_uri = http://127.0.0.1:23750\nplugin_spec_dir = {short_dir}\n")
    result = discoverable(conf, docker_dirs)
    assert not result.ok
    assert result.message.startswith(f"plugin_spec_dir {short_dir} is not where Docker reads")


# -- the plugin answers --------------------------------------------------------------

def test_plugin_answering_on_its_socket(load, short_dir):
    sock = short_dir / "kuryr.sock"
    with unix_server(sock, {("POST", "/Plugin.Activate"): (200, ACTIVATE)}):
        result = status.check_plugin_answers(load(f"[DEFAULT]\nkuryr_uri = unix://{sock}\n"))
    assert result.ok, result.message


def test_plugin_answering_over_tcp(load):
    with tcp_server({("POST", "/Plugin.Activate"): (200, ACTIVATE)}) as server:
        uri = f"http://127.0.0.1:{server.server_port}"
        result = status.check_plugin_answers(load(f"[DEFAULT]\nkuryr_uri = {uri}\n"))
    assert result.ok, result.message


def test_stale_plugin_socket_is_refused(load, short_dir):
    sock = short_dir / "kuryr.sock"
    # A socket file nobody listens on: what a killed `kuryr serve` leaves behind.
    with socket.socket(socket.AF_UNIX) as stale:
        stale.bind(str(sock))
    result = status.check_plugin_answers(load(f"[DEFAULT]\nkuryr_uri = unix://{sock}\n"))
    assert not result.ok
    assert result.message == (f"the plugin does not answer on unix://{sock}: connection "
                              "refused (is `kuryr serve` running?)")


def test_something_else_on_the_plugin_socket(load, short_dir):
    sock = short_dir / "kuryr.sock"
    with unix_server(sock, {}):
        result = status.check_plugin_answers(load(f"[DEFAULT]\nkuryr_uri = unix://{sock}\n"))
    assert not result.ok
    assert "something other than Kuryr" in result.message


# -- dockerd -------------------------------------------------------------------

def test_dockerd_answering_ping(load, short_dir):
    sock = short_dir / "docker.sock"
    with unix_server(sock, {("GET", "/_ping"): (200, "OK")}):
        result = status.check_docker(load(f"[DEFAULT]\ndocker_uri = unix://{sock}\n"))
    assert result.ok
    assert result.message == f"dockerd answers at unix://{sock}"


def test_dockerd_missing(load, short_dir):
    sock = short_dir / "docker.sock"
    result = status.check_docker(load(f"[DEFAULT]\ndocker_uri = unix://{sock}\n"))
    assert not result.ok
    assert result.message.startswith(f"dockerd is not reachable at unix://{sock}: no such file")


# -- all together ----------------------------------------------------------------

def test_a_hanging_check_is_cut_short():
    started = time.monotonic()
    result = status.bounded("slow", lambda: time.sleep(5) or status.Result("slow", True, ""),
                            deadline=0.2)
    assert time.monotonic() - started < 2
    assert result == status.Result("slow", False, "no answer within 0.2 s")


def test_a_crashing_check_is_a_failure_not_a_crash():
    result = status.bounded("bad", lambda: 1 / 0, deadline=1)
    assert not result.ok
    assert "division by zero" in result.message


def test_main_exits_0_when_everything_answers(load, short_dir, capsys, monkeypatch):
    plugin, docker = short_dir / "kuryr.sock", short_dir / "docker.sock"
    (short_dir / "spec").mkdir()
    (short_dir / "spec" / "kuryr.spec").write_text(f"unix://{plugin}\n")
    with (tcp_server({("GET", "/v2.0/extensions"): (200, EXTENSIONS)}) as neutron,
          unix_server(plugin, {("POST", "/Plugin.Activate"): (200, ACTIVATE)}),
          unix_server(docker, {("GET", "/_ping"): (200, "OK")})):
        conf = load(no_auth(f"http://127.0.0.1:{neutron.server_port}",
                            f"[DEFAULT]\nkuryr_uri = unix://{plugin}\ndocker_uri = unix://{docker}"
                            "\nport_driver = nested-vlan\n"))
        # Docker's own spec dirs need root; a temporary one stands in for them.
        monkeypatch.setattr(status, "DOCKER_SPEC_DIRS", (short_dir / "spec",))
        code = status.main(conf)
    lines = capsys.readouterr().out.splitlines()
    assert code == 0, lines
    assert [line.split(":")[0] for line in lines] == [
        "OK    neutron", "OK    plugin-discovery", "OK    plugin", "OK    docker"]


def test_kuryr_status_command_exits_1_and_names_each_failure(tmp_path, short_dir):
    path = tmp_path / "kuryr.conf"
    path.write_text(no_auth(f"http://127.0.0.1:{closed_port()}",
                            f"[DEFAULT]\nkuryr_uri = unix://{short_dir}/kuryr.sock\n"
                            f"docker_uri = unix://{short_dir}/docker.sock\n"
                            f"[binding]\novsdb_connection = unix:{short_dir}/db.sock"))
    proc = subprocess.run([sys.executable, "-m", "kuryr.cli", "status", "--config-file",
                           str(path)], capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert proc.stderr == ""
    lines = proc.stdout.splitlines()
    assert lines[0] == f"config: {path} (from --config-file)"
    assert [line.split(":")[0] for line in lines[1:]] == [
        "FAIL  neutron", "FAIL  ovs", "FAIL  plugin-discovery", "FAIL  plugin", "FAIL  docker"]


def test_kuryr_status_reads_kuryr_config_file_and_names_it(tmp_path, short_dir):
    """What `eval "$(kuryr-aio env)"; kuryr status` does: no --config-file."""
    plugin, docker = short_dir / "kuryr.sock", short_dir / "docker.sock"
    path = tmp_path / "kuryr.conf"
    path.write_text(no_auth(f"http://127.0.0.1:{closed_port()}",
                            f"[DEFAULT]\nkuryr_uri = unix://{plugin}\n"
                            f"docker_uri = unix://{docker}\nport_driver = nested-vlan"))
    env = {**os.environ, "KURYR_CONFIG_FILE": str(path)}
    with unix_server(docker, {("GET", "/_ping"): (200, "OK")}):
        proc = subprocess.run([sys.executable, "-m", "kuryr.cli", "status"], env=env,
                              capture_output=True, text=True, timeout=60, check=False)
    lines = proc.stdout.splitlines()
    assert lines[0] == f"config: {path} (from KURYR_CONFIG_FILE)", proc.stdout + proc.stderr
    # Every check used the file: its docker_uri answers, its Neutron endpoint does not.
    assert lines[-1] == f"OK    docker: dockerd answers at unix://{docker}"
    assert f"FAIL  plugin: the plugin does not answer on unix://{plugin}" in proc.stdout
    assert "auth_type is not set" not in proc.stdout


def test_kuryr_status_refuses_a_missing_kuryr_config_file(tmp_path):
    missing = tmp_path / "kuryr.conf"
    env = {**os.environ, "KURYR_CONFIG_FILE": str(missing)}
    proc = subprocess.run([sys.executable, "-m", "kuryr.cli", "status"], env=env,
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert proc.stderr == (f"kuryr: error: KURYR_CONFIG_FILE={missing}: {missing} does not "
                           "exist (unset KURYR_CONFIG_FILE or name the file with "
                           "--config-file)\n")

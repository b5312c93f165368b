"""`kuryr-cni` end to end against real unix sockets: a tiny HTTP server in a thread
plays the node daemon; a path with nothing listening plays a daemon that is down."""

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

from kuryr.cni import main, wire
from kuryr.cni.protocol import SUPPORTED_VERSIONS, Code

from .test_cni_protocol import ADD_ENV, SPEC_CONFIG, SPEC_RESULT

ROOT = Path(__file__).resolve().parents[2]
HEAVY = ("pydantic", "fastapi", "starlette", "uvicorn", "oslo_config", "oslo_log",
         "openstack", "keystoneauth1", "pyroute2", "ovsdbapp", "requests")


@pytest.fixture
def socket_path():
    # AF_UNIX paths are limited to 107 bytes; pytest's tmp_path can be longer.
    with tempfile.TemporaryDirectory(dir="/tmp", prefix="kuryr-cni-") as tmp:
        yield str(Path(tmp) / "cni.sock")


class Daemon:
    """Answers every POST with ``answers[path] = (status, body)``; keeps requests."""

    def __init__(self, path, answers, delay=0.0):
        self.requests = []
        daemon = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                daemon.requests.append((self.path, self.headers["Content-Type"],
                                        json.loads(body)))
                time.sleep(delay)
                status, answer = answers.get(self.path, (404, {"code": 999, "msg": "?"}))
                payload = answer if isinstance(answer, bytes) else json.dumps(answer).encode()
                with contextlib.suppress(BrokenPipeError):  # the client may have given up
                    self.send_response(status)
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)

            def log_message(self, *args):  # a unix peer has no address to log
                pass

        self.server = socketserver.ThreadingUnixStreamServer(path, Handler)
        # A short poll: shutdown() waits for the loop to notice, 0.5 s by default.
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True,
                                       kwargs={"poll_interval": 0.02})

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


def stdin_for(socket_path, version="1.0.0", **extra):
    return json.dumps({**SPEC_CONFIG, "cniVersion": version, "daemon_socket": socket_path,
                       **extra}).encode()


def env_for(command):
    return {**ADD_ENV, "CNI_COMMAND": command}


# -- VERSION -----------------------------------------------------------------------------
@pytest.mark.parametrize("version", SUPPORTED_VERSIONS)
def test_version_for_every_version(version):
    document, status = main.run({"CNI_COMMAND": "VERSION"},
                                json.dumps({"cniVersion": version}).encode())
    assert status == 0
    assert document == {"cniVersion": version, "supportedVersions": list(SUPPORTED_VERSIONS)}


# -- ADD through a real socket -----------------------------------------------------------
@pytest.mark.parametrize("version", SUPPORTED_VERSIONS)
def test_add_sends_one_request_and_renders_the_result_for_the_version(socket_path, version):
    with Daemon(socket_path, {"/v1/add": (200, SPEC_RESULT)}) as daemon:
        document, status = main.run(env_for("ADD"), stdin_for(socket_path, version))
    assert status == 0
    assert document["cniVersion"] == version
    assert document["interfaces"] == SPEC_RESULT["interfaces"]
    ip = document["ips"][0]
    assert ("version" in ip) == (version < "1.0.0")
    [(path, content_type, body)] = daemon.requests
    assert (path, content_type) == ("/v1/add", "application/json")
    assert body["command"] == "ADD"
    assert body["containerId"] == "3f2a9c"
    assert body["netns"] == "/var/run/netns/blue"
    assert body["pod"] == {"namespace": "default", "name": "web-0", "uid": "1234-abcd",
                           "infraContainerId": "3f2a9c"}
    assert body["config"]["keyA"] == SPEC_CONFIG["keyA"]


def test_daemon_error_is_passed_through(socket_path):
    refusal = {"code": 7, "msg": "no subnet for namespace default", "details": "see logs"}
    with Daemon(socket_path, {"/v1/add": (400, refusal)}):
        document, status = main.run(env_for("ADD"), stdin_for(socket_path, "0.4.0"))
    assert status == 1
    assert document == {"cniVersion": "0.4.0", **refusal}


def test_malformed_result_is_kuryr_error_100(socket_path):
    with Daemon(socket_path, {"/v1/add": (200, {"ips": [{"address": "nonsense"}]})}):
        document, status = main.run(env_for("ADD"), stdin_for(socket_path))
    assert (document["code"], status) == (Code.DAEMON_ANSWER_UNREADABLE, 1)


def read_whole_request(conn):
    data = b""
    while b"\r\n\r\n" not in data:
        data += conn.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                  if line.lower().startswith(b"content-length:"))
    while len(body) < length:
        body += conn.recv(65536)


def test_something_that_is_not_http_on_the_socket_is_kuryr_error_100(socket_path):
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(socket_path)
    server.listen(1)

    def babble():
        conn, _ = server.accept()
        read_whole_request(conn)  # closing with bytes unread would reset the connection
        conn.sendall(b"SSH-2.0-OpenSSH\r\n\r\n")
        conn.close()

    thread = threading.Thread(target=babble, daemon=True)
    thread.start()
    try:
        document, status = main.run(env_for("ADD"), stdin_for(socket_path))
    finally:
        thread.join(5)
        server.close()
    assert (document["code"], status) == (Code.DAEMON_ANSWER_UNREADABLE, 1)


def test_slow_daemon_is_kuryr_error_101(socket_path, monkeypatch):
    monkeypatch.setitem(wire.TIMEOUTS, main.Command.ADD, 0.2)
    with Daemon(socket_path, {"/v1/add": (200, SPEC_RESULT)}, delay=1.0):
        document, status = main.run(env_for("ADD"), stdin_for(socket_path))
    assert (document["code"], status) == (Code.DAEMON_TIMEOUT, 1)
    assert "0.2 s" in document["msg"]


# -- daemon down -----------------------------------------------------------------------------
def test_daemon_down_is_try_again_later_naming_the_socket(socket_path):
    document, status = main.run(env_for("ADD"), stdin_for(socket_path))
    assert status == 1
    assert document["code"] == Code.TRY_AGAIN_LATER
    assert socket_path in document["msg"]


def test_socket_left_by_a_dead_daemon_is_try_again_later(socket_path):
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(socket_path)  # bound, never listening: connect is refused
    try:
        document, _ = main.run(env_for("DEL"), stdin_for(socket_path))
    finally:
        stale.close()
    assert document["code"] == Code.TRY_AGAIN_LATER


# -- DEL, CHECK, STATUS, GC ------------------------------------------------------------------
def test_del_prints_nothing_on_success(socket_path):
    with Daemon(socket_path, {"/v1/del": (200, {})}) as daemon:
        assert main.run(env_for("DEL"), stdin_for(socket_path)) == (None, 0)
    assert daemon.requests[0][2]["command"] == "DEL"


def test_del_of_an_unknown_container_succeeds(socket_path):
    unknown = {"code": 3, "msg": "container 3f2a9c unknown"}
    with Daemon(socket_path, {"/v1/del": (404, unknown)}):
        assert main.run(env_for("DEL"), stdin_for(socket_path)) == (None, 0)


def test_check_passes_prev_result(socket_path):
    with Daemon(socket_path, {"/v1/check": (200, {})}) as daemon:
        outcome = main.run(env_for("CHECK"), stdin_for(socket_path, "0.4.0",
                                                       prevResult=SPEC_RESULT))
    assert outcome == (None, 0)
    assert daemon.requests[0][2]["config"]["prevResult"] == SPEC_RESULT


def test_check_is_refused_for_0_3_x(socket_path):
    document, status = main.run(env_for("CHECK"), stdin_for(socket_path, "0.3.1"))
    assert (document["code"], status) == (Code.INCOMPATIBLE_VERSION, 1)


def test_status_when_the_daemon_answers(socket_path):
    with Daemon(socket_path, {"/v1/status": (200, {})}):
        assert main.run({"CNI_COMMAND": "STATUS"}, stdin_for(socket_path, "1.1.0")) == (None, 0)


def test_status_when_the_daemon_is_down_is_error_50(socket_path):
    document, status = main.run({"CNI_COMMAND": "STATUS"}, stdin_for(socket_path, "1.1.0"))
    assert (document["code"], status) == (Code.PLUGIN_NOT_AVAILABLE, 1)
    assert socket_path in document["msg"]


def test_gc_passes_the_valid_attachments(socket_path):
    attachments = [{"containerID": "3f2a9c", "ifname": "eth0"}]
    with Daemon(socket_path, {"/v1/gc": (200, {})}) as daemon:
        outcome = main.run({"CNI_COMMAND": "GC", "CNI_PATH": "/opt/cni/bin"},
                           stdin_for(socket_path, "1.1.0",
                                     **{"cni.dev/valid-attachments": attachments}))
    assert outcome == (None, 0)
    assert daemon.requests[0][2]["validAttachments"] == attachments


# -- the executable as a runtime runs it -----------------------------------------------------
def run_executable(env, stdin, *python_flags):
    return subprocess.run([sys.executable, *python_flags, "-m", "kuryr.cni.main"],
                          input=stdin, capture_output=True, cwd=ROOT, timeout=30, check=False,
                          env={"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(ROOT),
                               **env})


@pytest.mark.parametrize(("env", "stdin", "code"), [
    ({"CNI_COMMAND": "ADD"}, SPEC_CONFIG, Code.INVALID_ENVIRONMENT),
    (ADD_ENV, "{not json", Code.DECODE_FAILURE),
    (ADD_ENV, {**SPEC_CONFIG, "cniVersion": "0.2.0"}, Code.INCOMPATIBLE_VERSION),
])
def test_errors_are_one_json_document_on_stdout_and_exit_1(env, stdin, code):
    text = stdin if isinstance(stdin, str) else json.dumps(stdin)
    done = run_executable(env, text.encode())
    assert done.returncode == 1
    assert json.loads(done.stdout)["code"] == code  # json.loads refuses a second document


def test_version_imports_nothing_heavy_and_no_http_client():
    done = run_executable({"CNI_COMMAND": "VERSION"}, b'{"cniVersion": "1.0.0"}',
                          "-X", "importtime")
    assert done.returncode == 0
    assert json.loads(done.stdout)["cniVersion"] == "1.0.0"
    imported = {line.rsplit("|", 1)[-1].strip() for line in done.stderr.decode().splitlines()}
    assert "kuryr.cni.protocol" in imported  # the run was measured
    heavy = {name for name in imported if name.split(".")[0] in (*HEAVY, "http")}
    assert not heavy, heavy


def test_importing_main_pulls_no_heavy_module():
    code = ("import sys, kuryr.cni.main, kuryr.cni.wire; "
            "print('\\n'.join(sorted(sys.modules)))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, cwd=ROOT,
                          timeout=30, check=True, env={"PYTHONPATH": str(ROOT)})
    loaded = {name.split(".")[0] for name in done.stdout.decode().split()}
    assert not loaded & set(HEAVY)

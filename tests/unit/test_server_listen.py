"""The plugin listener refuses to be a way in: socket modes, loopback-or-TLS, and a
real TLS handshake with the settings Kuryr gives uvicorn (client certificates required)."""

from __future__ import annotations

import datetime
import grp
import os
import socket
import ssl
import stat
import threading
import time
from pathlib import Path

import pytest
import uvicorn
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from kuryr import config
from kuryr.server import listen_args


def conf_with(**overrides: str):
    conf = config.load([])
    for name, value in overrides.items():
        conf.set_override(name, value)
    return conf


def test_unix_socket_is_root_only(tmp_path):
    path = tmp_path / "plugins" / "kuryr.sock"
    args = listen_args(conf_with(kuryr_uri=f"unix://{path}"))
    try:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert stat.S_ISSOCK(path.stat().st_mode)
    finally:
        os.close(args["fd"])


def test_unix_socket_group_gets_0660(tmp_path):
    group = grp.getgrgid(os.getgid()).gr_name
    path = tmp_path / "kuryr.sock"
    args = listen_args(conf_with(kuryr_uri=f"unix://{path}", socket_group=group))
    try:
        assert stat.S_IMODE(path.stat().st_mode) == 0o660
        assert path.stat().st_gid == os.getgid()
    finally:
        os.close(args["fd"])


def test_unknown_socket_group_is_a_clear_error(tmp_path):
    with pytest.raises(SystemExit, match="socket_group 'no-such-group-kuryr' does not exist"):
        listen_args(conf_with(kuryr_uri=f"unix://{tmp_path}/k.sock",
                              socket_group="no-such-group-kuryr"))


def test_tcp_on_loopback_is_allowed_and_writes_a_spec(tmp_path):
    args = listen_args(conf_with(kuryr_uri="http://127.0.0.1:23750",
                                 plugin_spec_dir=str(tmp_path)))
    assert args == {"host": "127.0.0.1", "port": 23750}
    assert (tmp_path / "kuryr.spec").read_text() == "http://127.0.0.1:23750\n"


@pytest.mark.parametrize("host", ["0.0.0.0", "192.0.2.10", "[::]", "kuryr.example"])
def test_tcp_beyond_loopback_without_tls_is_refused(tmp_path, host):
    with pytest.raises(SystemExit, match="without TLS"):
        listen_args(conf_with(kuryr_uri=f"http://{host}:23750",
                              plugin_spec_dir=str(tmp_path)))
    assert not (tmp_path / "kuryr.spec").exists()


def test_half_configured_tls_is_refused(tmp_path):
    cert = tmp_path / "c.pem"
    cert.write_text("x")
    with pytest.raises(SystemExit, match="ssl_key_file, ssl_client_ca_file"):
        listen_args(conf_with(kuryr_uri="https://0.0.0.0:23750", ssl_cert_file=str(cert),
                              plugin_spec_dir=str(tmp_path)))


# -- a real handshake --------------------------------------------------------------------
def _key():
    return ec.generate_private_key(ec.SECP256R1())


def _cert(subject: str, key, issuer_name=None, issuer_key=None, ca=False, san=None):
    now = datetime.datetime.now(datetime.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    builder = (x509.CertificateBuilder().subject_name(name)
               .issuer_name(issuer_name or name).public_key(key.public_key())
               .serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=1))
               .not_valid_after(now + datetime.timedelta(hours=1))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if san:
        builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
    return builder.sign(issuer_key or key, hashes.SHA256())


def _write(path: Path, cert=None, key=None) -> str:
    if cert is not None:
        path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    else:
        path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return str(path)


@pytest.fixture
def pki(tmp_path):
    import ipaddress

    ca_key = _key()
    ca = _cert("kuryr-test-ca", ca_key, ca=True)
    server_key, client_key = _key(), _key()
    server = _cert("127.0.0.1", server_key, ca.subject, ca_key,
                   san=[x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
    client = _cert("dockerd", client_key, ca.subject, ca_key)
    return {
        "ca": _write(tmp_path / "ca.pem", cert=ca),
        "server": _write(tmp_path / "server.pem", cert=server),
        "server_key": _write(tmp_path / "server.key", key=server_key),
        "client": _write(tmp_path / "client.pem", cert=client),
        "client_key": _write(tmp_path / "client.key", key=client_key),
    }


async def _activate(scope, receive, send):
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": b'{"Implements": ["NetworkDriver"]}'})


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _tls_get(port: int, ca: str, cert: str | None = None, key: str | None = None) -> bytes:
    context = ssl.create_default_context(cafile=ca)
    if cert:
        context.load_cert_chain(cert, key)
    with (socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
          context.wrap_socket(raw, server_hostname="127.0.0.1") as tls):
        tls.sendall(b"POST /Plugin.Activate HTTP/1.1\r\nHost: k\r\nContent-Length: 0\r\n"
                    b"Connection: close\r\n\r\n")
        return tls.recv(4096)


def _tls_get_refused(port: int, ca: str) -> None:
    """Raises when the listener refuses the connection: TLS 1.3 reports a refused
    handshake only on the first read, as an empty reply."""
    reply = _tls_get(port, ca)
    assert not reply, reply
    raise ConnectionError("refused")


def test_tls_listener_requires_a_client_certificate(tmp_path, pki):
    port = _free_port()
    args = listen_args(conf_with(
        kuryr_uri=f"https://127.0.0.1:{port}", plugin_spec_dir=str(tmp_path / "spec"),
        ssl_cert_file=pki["server"], ssl_key_file=pki["server_key"],
        ssl_client_ca_file=pki["ca"]))
    server = uvicorn.Server(uvicorn.Config(_activate, log_level="error", **args))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.05)
        assert server.started
        assert b"200 OK" in _tls_get(port, pki["ca"], pki["client"], pki["client_key"])
        with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
            _tls_get_refused(port, pki["ca"])  # no client certificate
    finally:
        server.should_exit = True
        thread.join(10)
    assert not (tmp_path / "spec" / "kuryr.spec").exists(), "a plain-HTTP spec for TLS"


def test_a_socket_another_kuryr_serves_on_is_never_taken(tmp_path):
    import socket

    path = tmp_path / "kuryr.sock"
    live = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    live.bind(str(path))
    live.listen(1)
    try:
        with pytest.raises(SystemExit, match="another process is serving on"):
            listen_args(conf_with(kuryr_uri=f"unix://{path}"))
        assert path.exists()
    finally:
        live.close()


def test_a_stale_socket_file_is_replaced(tmp_path):
    import os
    import socket

    path = tmp_path / "kuryr.sock"
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(str(path))
    dead.close()  # the file stays, nobody listens
    fd = listen_args(conf_with(kuryr_uri=f"unix://{path}"))["fd"]
    os.close(fd)


@pytest.mark.parametrize(("make", "kind"), [
    (lambda p: p.mkdir(), "a directory"),
    (lambda p: p.write_text("not a socket"), "a regular file"),
    (os.mkfifo, "a FIFO"),
    (lambda p: p.symlink_to("/nonexistent"), "a symbolic link"),
])
def test_a_non_socket_at_the_socket_path_is_named_and_kept(tmp_path, make, kind):
    path = tmp_path / "kuryr.sock"
    make(path)
    with pytest.raises(SystemExit, match=f"{path} is {kind}, not a socket"):
        listen_args(conf_with(kuryr_uri=f"unix://{path}"))
    assert path.is_symlink() or path.exists(), "someone's file was removed"


def test_a_kuryr_that_cannot_start_leaves_no_socket(tmp_path, monkeypatch):
    from kuryr import server

    def refuse(conf, neutron=None):
        raise SystemExit("kuryr: [DEFAULT] host is not this host's OVN chassis")

    monkeypatch.setattr(server, "build", refuse)
    path = tmp_path / "kuryr.sock"
    with pytest.raises(SystemExit, match="OVN chassis"):
        server.serve(conf_with(kuryr_uri=f"unix://{path}"))
    assert not path.exists()

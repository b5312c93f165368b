"""`kuryr serve`: build everything from config, then serve Docker's plugin API."""

from __future__ import annotations

import grp
import ipaddress
import logging
import os
import socket
import ssl
import sys
from pathlib import Path
from urllib.parse import urlparse

import uvicorn
from oslo_config import cfg

from kuryr.binding.ovs import OVS
from kuryr.libnetwork import gc, ports
from kuryr.libnetwork.app import build_app
from kuryr.libnetwork.background import Background
from kuryr.libnetwork.context import Context
from kuryr.libnetwork.pool import PortPool
from kuryr.neutron.client import Neutron, connect
from kuryr.publish.forwarder import Forwarder

LOG = logging.getLogger(__name__)

# Kuryr's default pools cover every address of their family, so every subnet
# Kuryr creates comes from one pool and Neutron itself refuses overlaps.
COVER_ALL = {4: ("0.0.0.0/0", 24), 6: ("::/0", 64)}


def ensure_subnetpools(ctx: Context) -> None:
    names = {4: ctx.conf.neutron.default_subnetpool_v4, 6: ctx.conf.neutron.default_subnetpool_v6}
    for version, name in names.items():
        pool = ctx.neutron.find_subnetpool(name)
        if pool is None:
            prefix, length = COVER_ALL[version]
            pool = ctx.neutron.create_subnetpool(
                name=name, prefixes=[prefix], default_prefix_length=length,
                minimum_prefix_length=8 if version == 4 else 48,
                description="Kuryr: subnets of Docker networks")
            LOG.info("created subnetpool %s (%s)", name, pool.id)
        ctx.subnetpool_ids[version] = pool.id
        ctx.subnetpool_prefixes[version] = list(pool.prefixes)


def gc_scope(ctx: Context) -> gc.Scope:
    return gc.Scope(neutron=ctx.neutron, ovs=ctx.ovs, host=ctx.host,
                    bridge=ctx.conf.binding.ovs_bridge,
                    docker_networks=lambda: gc.docker_network_ids(ctx.conf.docker_uri),
                    held=ctx.pool.held if ctx.pool is not None else lambda: set())


def build_context(conf: cfg.ConfigOpts, neutron: Neutron | None = None) -> Context:
    neutron = neutron or connect(conf)
    ctx = Context(conf, neutron, OVS(conf.binding.ovsdb_connection),
                  host=conf.host or socket.gethostname(), forwarder=Forwarder(),
                  background=Background(neutron.counter.operation))
    ctx.dns_enabled = "dns-integration" in neutron.extensions()
    ensure_subnetpools(ctx)
    if conf.pool.ports_per_network > 0:
        ctx.pool = PortPool(ctx, conf.pool.ports_per_network)
        free = ctx.pool.restore()
        if free:
            LOG.info("took back %d ready pooled ports", free)
    # Nothing of this process is in flight yet (Docker's calls wait for the
    # socket), so leftovers of a crash need no grace period here.
    removed = gc.run_once(gc_scope(ctx), grace=0)
    if removed:
        LOG.info("removed %d leftovers of containers that are gone", len(removed))
    restored = ports.restore(ctx)
    if restored:
        LOG.info("serving the published ports of %d running containers again", restored)
    return ctx


def _unix_socket(path: Path, group: str) -> socket.socket:
    """Bind the plugin socket ourselves so its mode is right from the first moment:
    root-only (0600), or 0660 for ``group``.  Whoever can write to it creates
    Neutron ports with Kuryr's credentials."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)
    try:
        sock.bind(str(path))
    finally:
        os.umask(old)
    if group:
        try:
            gid = grp.getgrnam(group).gr_gid
        except KeyError:
            sock.close()
            raise SystemExit(f"kuryr: socket_group {group!r} does not exist") from None
        os.chown(path, -1, gid)
        os.chmod(path, 0o660)
    sock.listen(128)
    return sock


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _tls_args(conf: cfg.ConfigOpts) -> dict:
    files = {"ssl_cert_file": conf.ssl_cert_file, "ssl_key_file": conf.ssl_key_file,
             "ssl_client_ca_file": conf.ssl_client_ca_file}
    if not any(files.values()):
        return {}
    missing = [name for name, value in files.items() if not value]
    if missing:
        raise SystemExit(f"kuryr: TLS needs {', '.join(missing)} too (client certificates "
                         "are required: the plugin API creates Neutron resources)")
    for name, value in files.items():
        if not Path(value).is_file():
            raise SystemExit(f"kuryr: {name} {value} does not exist")
    return {"ssl_certfile": conf.ssl_cert_file, "ssl_keyfile": conf.ssl_key_file,
            "ssl_ca_certs": conf.ssl_client_ca_file, "ssl_cert_reqs": ssl.CERT_REQUIRED}


def listen_args(conf: cfg.ConfigOpts) -> dict:
    """uvicorn's listening arguments for kuryr_uri, refusing insecure ones."""
    uri = urlparse(conf.kuryr_uri)
    if uri.scheme == "unix":
        # detach(): the descriptor now belongs to uvicorn, not to a socket object
        return {"fd": _unix_socket(Path(uri.path), conf.socket_group).detach()}
    if uri.scheme not in ("http", "https", "tcp"):
        raise SystemExit(f"kuryr: kuryr_uri {conf.kuryr_uri!r} must be unix:// or http(s)://")
    host, port = uri.hostname or "127.0.0.1", uri.port or 23750
    tls = _tls_args(conf)
    if not tls and not _is_loopback(host):
        raise SystemExit(
            f"kuryr: refusing to serve the plugin API on {host}:{port} without TLS: anyone "
            "who reaches it can create Neutron ports. Bind 127.0.0.1, or set "
            "ssl_cert_file, ssl_key_file and ssl_client_ca_file.")
    spec_dir = Path(conf.plugin_spec_dir)
    spec_dir.mkdir(parents=True, exist_ok=True)
    if tls:
        # Docker needs its own client certificate for this: a kuryr.json spec with
        # TLSConfig, written by whoever holds that certificate (docs/usage.md).
        LOG.info("TLS listener: Docker needs %s/kuryr.json with TLSConfig", spec_dir)
    else:
        (spec_dir / "kuryr.spec").write_text(f"http://{host}:{port}\n")
    return {"host": host, "port": port, **tls}


def serve(conf: cfg.ConfigOpts) -> int:
    logging.basicConfig(
        level=logging.DEBUG if conf.debug else logging.INFO, stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    os.umask(0o077)
    listen = listen_args(conf)  # first: an insecure listener is refused before any work
    ctx = build_context(conf)
    gc.Collector(gc_scope(ctx), conf.gc.interval, conf.gc.grace).start()
    LOG.info("kuryr serving %s for host %s", conf.kuryr_uri, ctx.host)
    uvicorn.run(build_app(ctx), log_level="warning", timeout_graceful_shutdown=5, **listen)
    if ctx.background is not None and not ctx.background.wait_idle(30):
        LOG.warning("stopping with Neutron writes still queued; the next start collects leftovers")
    return 0

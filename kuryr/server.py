"""`kuryr serve`: build everything from config, then serve Docker's plugin API."""

from __future__ import annotations

import logging
import os
import socket
import sys
from pathlib import Path
from urllib.parse import urlparse

import uvicorn
from oslo_config import cfg

from kuryr.binding.ovs import OVS
from kuryr.libnetwork import ports, sweep
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
    swept = sweep.sweep(ctx)
    if swept:
        LOG.info("removed %d ports of containers that are gone", len(swept))
    restored = ports.restore(ctx)
    if restored:
        LOG.info("serving the published ports of %d running containers again", restored)
    return ctx


def _listen_args(conf: cfg.ConfigOpts) -> dict:
    uri = urlparse(conf.kuryr_uri)
    if uri.scheme == "unix":
        path = Path(uri.path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.unlink(missing_ok=True)
        return {"uds": str(path)}
    if uri.scheme in ("http", "tcp"):
        spec_dir = Path(conf.plugin_spec_dir)
        spec_dir.mkdir(parents=True, exist_ok=True)
        (spec_dir / "kuryr.spec").write_text(f"http://{uri.hostname}:{uri.port}\n")
        return {"host": uri.hostname or "127.0.0.1", "port": uri.port or 23750}
    raise SystemExit(f"kuryr: kuryr_uri {conf.kuryr_uri!r} must be unix:// or http://")


def serve(conf: cfg.ConfigOpts) -> int:
    logging.basicConfig(
        level=logging.DEBUG if conf.debug else logging.INFO, stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    ctx = build_context(conf)
    LOG.info("kuryr serving %s for host %s", conf.kuryr_uri, ctx.host)
    os.umask(0o077)  # the plugin socket is root-only: it creates Neutron ports
    uvicorn.run(build_app(ctx), log_level="warning", timeout_graceful_shutdown=5,
                **_listen_args(conf))
    if ctx.background is not None and not ctx.background.wait_idle(30):
        LOG.warning("stopping with Neutron writes still queued; the next start sweeps")
    return 0

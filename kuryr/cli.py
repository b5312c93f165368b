"""The `kuryr` command."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from kuryr import __version__, config


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(
        prog="kuryr", description="Docker network and IPAM driver on OpenStack Neutron.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="configuration (every command):\n"
        "  --config-file FILE  read FILE (repeat for more; later files win)\n"
        "  --config-dir DIR    also read DIR/*.conf, after the files\n"
        f"Without --config-file: the file ${config.CONFIG_FILE_ENV} names (as set by\n"
        '`eval "$(kuryr-aio env)"`; a missing one is an error), else\n'
        f"{config.DEFAULT_CONFIG_FILE} when it exists. `kuryr status` first prints\n"
        "which files it read.")
    parser.add_argument("--version", action="version", version=f"kuryr {__version__}")
    parser.add_argument("command", choices=["serve", "cni-daemon", "k8s-controller", "ports",
                                            "gc", "status"],
                        help="serve: run the Docker plugin (libnetwork remote driver + IPAM); "
                        "cni-daemon: run the Kubernetes node daemon kuryr-cni talks to "
                        "([kubernetes] daemon_socket); "
                        "ports: list the ports published on this host (what `docker port` "
                        "cannot show for a remote driver); "
                        "gc: remove what this host's Kuryr left behind for containers "
                        "that are gone; "
                        "status: check Neutron, Open vSwitch, the plugin socket and dockerd, "
                        "and say what is wrong (exit 1 when anything is); "
                        "k8s-controller: run the Kubernetes controller until SIGTERM")
    parser.add_argument("--dry-run", action="store_true",
                        help="gc: only show what would be removed")
    parser.add_argument("--grace", type=float, default=None, metavar="SECONDS",
                        help="gc: leave alone what changed less than this long ago "
                        "(default: [gc] grace)")
    parser.add_argument("--trust-docker", action="store_true",
                        help="gc: collect networks dockerd does not have even when it "
                        "knows none of this host's Kuryr networks (docker_uri is right)")
    # Known here (not only to oslo.config) so that `kuryr --config-file F status`
    # does not take F for the command.
    parser.add_argument("--config-file", action="append", default=[], help=argparse.SUPPRESS)
    parser.add_argument("--config-dir", action="append", default=[], help=argparse.SUPPRESS)
    args, rest = parser.parse_known_args(argv)
    config_args = [*(f"--config-file={path}" for path in args.config_file),
                   *(f"--config-dir={path}" for path in args.config_dir)]
    try:
        conf = config.load([*config_args, *rest])
    except (config.ConfigFileMissing, config.cfg.ConfigFilesNotFoundError,
            config.cfg.ConfigFilesPermissionDeniedError, config.cfg.ConfigDirNotFoundError,
            config.cfg.ConfigFileParseError) as exc:
        print(f"kuryr: error: {exc}", file=sys.stderr)
        return 2
    if args.command == "serve":
        from kuryr.server import serve

        return serve(conf)
    if args.command == "cni-daemon":
        from kuryr.k8s.cni_daemon import serve as serve_cni

        return serve_cni(conf)
    if args.command == "ports":
        return list_ports(conf)
    if args.command == "status":
        return status(conf)
    if args.command == "k8s-controller":
        return run_k8s_controller(conf)
    if args.command == "gc":
        return collect_garbage(conf, args.dry_run, args.grace, args.trust_docker)
    return 2


def collect_garbage(conf: config.cfg.ConfigOpts, dry_run: bool, grace: float | None,
                    trust_docker: bool = False) -> int:
    import dataclasses
    import socket

    from kuryr.binding.ovs import OVS
    from kuryr.libnetwork import gc
    from kuryr.neutron.client import connect
    from kuryr.server import gc_scope, placement_for

    neutron = connect(conf)
    host = conf.host or socket.gethostname()
    scope = dataclasses.replace(
        gc_scope(conf, neutron, OVS(conf.binding.ovsdb_connection), host,
                 placement=placement_for(conf, neutron, host)),
        trust_docker=trust_docker)
    garbage = gc.collect(scope, conf.gc.grace if grace is None else grace)
    failed = [] if dry_run else gc.remove(scope, garbage)
    verb = "would remove" if dry_run else "removed"
    for item in garbage:
        print(f"{'could not remove' if item in failed else verb} {item}")
    if not garbage:
        print("nothing to collect")
    return 1 if failed else 0


def run_k8s_controller(conf: config.cfg.ConfigOpts) -> int:
    import logging
    import signal
    import threading

    from kuryr import logs
    from kuryr.k8s.factory import build_controller

    logs.configure(conf, "kuryr-k8s-controller.log")
    # One INFO line per API request (every watch reconnect) drowns the controller's own.
    logging.getLogger("httpx").setLevel(logging.DEBUG if conf.debug else logging.WARNING)
    stopping = threading.Event()
    controller = build_controller(conf, on_lost=stopping.set)
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stopping.set())
    if not controller.lead(stopping):  # stopped while another controller led
        return 0
    controller.start()
    stopping.wait()
    controller.stop()
    # Lost the Lease: a non-zero exit, so a supervisor starts it again as a candidate.
    return 1 if controller.leadership is not None and controller.leadership.lost else 0


def list_ports(conf: config.cfg.ConfigOpts) -> int:
    import socket

    from kuryr.libnetwork.ports import published_ports_on_host
    from kuryr.neutron.client import connect
    from kuryr.publish import spec
    from kuryr.server import placement_for

    neutron = connect(conf)
    host = conf.host or socket.gethostname()
    print(f"{'ENDPOINT':14} {'CONTAINER ADDRESS':18} PUBLISHED")
    for port in published_ports_on_host(neutron, placement_for(conf, neutron, host)):
        _, published = spec.decode(port.description)
        address = port.fixed_ips[0].ip_address if port.fixed_ips else "-"
        for item in published:
            print(f"{port.device_id[:12]:14} {address:18} {item.label()}")
    return 0


def status(conf: config.cfg.ConfigOpts) -> int:
    import logging

    from kuryr import status as checks

    # Client libraries log the very failures the checks report, as tracebacks
    # and retries; one line per check is the whole output.
    logging.disable(logging.CRITICAL)
    # Which file was read comes first: a wrong one explains every failure below.
    try:
        print(config.describe_sources(conf), flush=True)
        return checks.main(conf)
    except BrokenPipeError:
        # `kuryr status | head`: the reader left; say nothing more (not a traceback).
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


if __name__ == "__main__":
    sys.exit(main())

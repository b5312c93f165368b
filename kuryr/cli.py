"""The `kuryr` command."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from kuryr import config


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(
        prog="kuryr", description="Docker network and IPAM driver on OpenStack Neutron.",
        epilog="Options such as --config-file FILE are read from the rest of the line.")
    parser.add_argument("command", choices=["serve", "ports"],
                        help="serve: run the Docker plugin (libnetwork remote driver + IPAM); "
                        "ports: list the ports published on this host (what `docker port` "
                        "cannot show for a remote driver)")
    args, rest = parser.parse_known_args(argv)
    conf = config.load(rest)
    if args.command == "serve":
        from kuryr.server import serve

        return serve(conf)
    if args.command == "ports":
        return list_ports(conf)
    return 2


def list_ports(conf: config.cfg.ConfigOpts) -> int:
    import socket

    from kuryr.libnetwork.ports import published_ports_on_host
    from kuryr.neutron.client import connect
    from kuryr.publish import spec

    neutron = connect(conf)
    host = conf.host or socket.gethostname()
    print(f"{'ENDPOINT':14} {'CONTAINER ADDRESS':18} PUBLISHED")
    for port in published_ports_on_host(neutron, host):
        _, published = spec.decode(port.description)
        address = port.fixed_ips[0]["ip_address"] if port.fixed_ips else "-"
        for item in published:
            print(f"{port.device_id[:12]:14} {address:18} {item.label()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

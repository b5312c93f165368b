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
    parser.add_argument("command", choices=["serve"],
                        help="serve: run the Docker plugin (libnetwork remote driver + IPAM)")
    args, rest = parser.parse_known_args(argv)
    conf = config.load(rest)
    if args.command == "serve":
        from kuryr.server import serve

        return serve(conf)
    return 2


if __name__ == "__main__":
    sys.exit(main())

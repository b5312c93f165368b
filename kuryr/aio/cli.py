"""`kuryr-aio`: bring up, inspect and tear down the all-in-one stack."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence

from kuryr.aio import kubernetes_build
from kuryr.aio.layout import VM_MODES, Layout, check_host_name, check_hostname, check_vm_name
from kuryr.aio.procs import StackError


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="kuryr-aio",
        description="A real single-host OpenStack Neutron (ML2/OVN) + Open vSwitch + dockerd "
        "stack for Kuryr. Needs root on Debian 12.",
    )
    sub = p.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="install what is missing and start everything (idempotent)")
    mode = up.add_mutually_exclusive_group()
    mode.add_argument("--keystone", dest="mode", action="store_const", const="keystone",
                      help="switch to Keystone auth: Neutron checks tokens, Kuryr runs as "
                      "non-admin user kuryr (installs Keystone the first time)")
    mode.add_argument("--noauth", dest="mode", action="store_const", const="noauth",
                      help="switch back to a no-auth Neutron (the default mode)")
    up.add_argument("--k8s", action="store_true",
                    help="also run a Kubernetes 1.20 cluster whose pods are on Neutron ports "
                    "(kept by later `up`s; builds Kubernetes once, ~13 min)")
    sub.add_parser("status", help="exit 0 only when every component answers")
    sub.add_parser("env", help="print shell exports: eval \"$(kuryr-aio env)\"")
    down = sub.add_parser("down", help="stop exactly what `up` started")
    down.add_argument("--purge", action="store_true", help="also wipe the stack's state")
    _vm_parser(sub.add_parser("vm", help="simulated OpenStack VMs whose containers Kuryr "
                              "networks in nested mode"))
    _host_parser(sub.add_parser("host", help="simulated compute hosts: more OVN chassis on "
                                "this machine, each with its own Open vSwitch, Kuryr and "
                                "dockerd"))
    sub.add_parser("build-k8s", help="build kube-apiserver, kube-controller-manager, "
                   "kube-scheduler and kubelet from Debian's source package, once "
                   "(cached under /var/cache/kuryr-aio; ~13 min on 2 cores, 3 GB)")
    return p


def _checked(check: Callable[[str], str]) -> Callable[[str], str]:
    """An argparse type from a checker that raises ValueError."""
    def parse(text: str) -> str:
        try:
            return check(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from exc
    return parse


_vm_name = _checked(check_vm_name)


def _vm_parser(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="vm_command", required=True)
    up = sub.add_parser("up", help="make the VM (Neutron port, NIC, namespaces) and start "
                        "its relay, Open vSwitch, Kuryr and dockerd; restarts what is dead")
    up.add_argument("name", type=_vm_name)
    up.add_argument("--mode", choices=VM_MODES,
                    help="vlan: trunk sub-ports, the VM's own OVS tags them (default); "
                    "macvlan: allowed address pairs.  Kept for the VM's life")
    env = sub.add_parser("env", help="print shell exports for the VM: "
                         "eval \"$(kuryr-aio vm env NAME)\"")
    env.add_argument("name", type=_vm_name)
    down = sub.add_parser("down", help="delete the VM (stop it, delete its trunk, port and "
                          "what its Kuryr left in Neutron)")
    down.add_argument("name", type=_vm_name)
    down.add_argument("--purge", action="store_true",
                      help="also wipe its files (Docker images and data) and the Neutron "
                      "networks of its Docker networks")


def _host_parser(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="host_command", required=True)
    up = sub.add_parser("up", help="make the host (namespaces, underlay veth) and start its "
                        "relay, Open vSwitch, ovn-controller, Kuryr and dockerd; restarts "
                        "what is dead")
    up.add_argument("name", type=_checked(check_host_name))
    up.add_argument("--hostname", type=_checked(check_hostname),
                    help="its chassis name and Kuryr's [DEFAULT] host (default: NAME); "
                    "kept for the host's life")
    env = sub.add_parser("env", help="print shell exports for the host: "
                         "eval \"$(kuryr-aio host env NAME)\"")
    env.add_argument("name", type=_checked(check_host_name))
    down = sub.add_parser("down", help="delete the host: stop it, remove its namespace and "
                          "underlay veth, delete its chassis (its files stay)")
    down.add_argument("name", type=_checked(check_host_name))
    down.add_argument("--purge", action="store_true",
                      help="also wipe its files (Docker's data, hostname, underlay address)")


def _machine_main(what: str, action: Callable[[], object]) -> int:
    """A `vm` or `host` command that makes or deletes a machine: as root, a
    StackError reported in one line."""
    if os.geteuid() != 0:
        print(f"kuryr-aio: must run as root (a {what} is made of namespaces and daemons)",
              file=sys.stderr)
        return 2
    try:
        action()
    except StackError as exc:
        print(f"kuryr-aio: error: {exc}", file=sys.stderr)
        return 1
    return 0


def _host_main(args: argparse.Namespace, layout: Layout) -> int:
    from kuryr.aio.host import SimulatedHost
    host = SimulatedHost(layout, args.name)
    if args.host_command == "env":
        # Root too: the host's state directory (its hostname) is root's.
        return _machine_main("host", lambda: sys.stdout.write(host.env_exports()))
    if args.host_command == "up":
        return _machine_main("host", lambda: host.up(args.hostname))
    return _machine_main("host", lambda: host.delete(purge=args.purge))


def _vm_main(args: argparse.Namespace, layout: Layout) -> int:
    from kuryr.aio.vm import VirtualMachine
    machine = VirtualMachine(layout, args.name)
    if args.vm_command == "env":
        sys.stdout.write(machine.env_exports())
        return 0
    if args.vm_command == "up":
        return _machine_main("VM", lambda: machine.up(args.mode))
    return _machine_main("VM", lambda: machine.delete(purge=args.purge))


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    layout = Layout.default()
    if args.command == "build-k8s":
        return _build_k8s(layout)
    if args.command == "vm":
        return _vm_main(args, layout)
    if args.command == "host":
        return _host_main(args, layout)
    # Imported here: it loads pyroute2 and openstacksdk (~0.5 s), which
    # `build-k8s` on a built cache, a no-op, does not wait for.
    from kuryr.aio import stack
    if args.command == "env":
        sys.stdout.write(stack.env_exports(layout))
        return 0
    if os.geteuid() != 0:
        print("kuryr-aio: must run as root (it starts Open vSwitch, Neutron and dockerd)",
              file=sys.stderr)
        return 2
    if args.command == "status":
        return stack.main_status(layout)
    try:
        if args.command == "up":
            stack.up(layout, mode=args.mode, kubernetes=args.k8s)
        elif args.command == "down":
            stack.down(layout, purge=args.purge)
    except StackError as exc:
        print(f"kuryr-aio: error: {exc}", file=sys.stderr)
        return 1
    return 0


def _build_k8s(layout: Layout) -> int:
    if os.geteuid() != 0:
        print("kuryr-aio: build-k8s must run as root (it installs build dependencies)",
              file=sys.stderr)
        return 2
    try:
        kubernetes_build.build(layout)
    except StackError as exc:
        print(f"kuryr-aio: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Kuryr as a managed Docker plugin (v2): ``tools/build-plugin``.

The plugin is the Kuryr tree of :mod:`kuryr.aio.rootfs` plus a config.json;
`docker plugin create` makes it, `docker plugin set` points its mounts at the
host's paths, `docker plugin enable` starts it.  Users then create networks
with ``-d kuryr/kuryr:latest --ipam-driver kuryr/kuryr:latest``.

Run again, it changes only what differs: the same build (the tree's build id,
kept in the plugin's description) with the same settings is left alone.
``--push REF`` instead creates the plugin under a registry's name, pushes it
and removes that local copy: other hosts `docker plugin install` it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

from kuryr.aio import docker, procs, rootfs
from kuryr.aio.layout import Layout

DEFAULT_NAME = "kuryr/kuryr:latest"
SOCKET = "kuryr.sock"  # Docker looks for it in the plugin's /run/docker/plugins
CONFIG_FILE = "/etc/kuryr/kuryr.conf"
DOCUMENTATION = "docs/install.md of Kuryr's source (\"Managed Docker plugin\")"

# Kuryr's options are oslo.config's: OS_<GROUP>__<OPTION> in the environment
# overrides kuryr.conf.  These are the ones a deployment usually sets per host
# (`docker plugin set kuryr/kuryr:latest OS_NEUTRON__PASSWORD=...`); an unset
# one is absent from the environment, so kuryr.conf's value holds.
SETTABLE_ENV = (
    ("OS_DEFAULT__HOST", "Neutron binding host: the OVN chassis' hostname"),
    ("OS_DEFAULT__DEBUG", "true: log at debug level"),
    ("OS_NEUTRON__AUTH_TYPE", "keystoneauth plugin: password, v3applicationcredential, none"),
    ("OS_NEUTRON__AUTH_URL", "Keystone's URL"),
    ("OS_NEUTRON__USERNAME", "Keystone user"),
    ("OS_NEUTRON__PASSWORD", "Keystone password"),
    ("OS_NEUTRON__PROJECT_NAME", "Keystone project"),
    ("OS_NEUTRON__USER_DOMAIN_NAME", "the user's domain"),
    ("OS_NEUTRON__PROJECT_DOMAIN_NAME", "the project's domain"),
    ("OS_NEUTRON__REGION_NAME", "region of Neutron's endpoint"),
    ("OS_NEUTRON__ENDPOINT", "Neutron's URL with auth_type none (no Keystone)"),
)

# name -> (host path by default, path in the plugin, mount options, what for).
MOUNTS: dict[str, tuple[str, str, tuple[str, ...], str]] = {
    "config": ("/etc/kuryr", "/etc/kuryr", ("rbind", "ro"),
               "kuryr.conf (the same file kuryr-libnetwork reads)"),
    "openvswitch": ("/run/openvswitch", "/run/openvswitch", ("rbind",),
                    "Open vSwitch's database socket: the container veths are plugged into br-int"),
    # rslave: a container's namespace file is bind-mounted there by dockerd
    # after the plugin started; without it the plugin would not see it.
    "docker-netns": ("/run/docker/netns", "/run/docker/netns", ("rbind", "rslave"),
                     "dockerd's container network namespaces (docker_netns_dir)"),
    "docker-socket": ("/run/docker.sock", "/run/docker.sock", ("rbind",),
                      ("dockerd's API (docker_uri): container names for Neutron DNS, "
                       "and which networks still exist (garbage collection)")),
    "logs": ("/var/log/kuryr", "/var/log/kuryr", ("rbind",),
             ("for [DEFAULT] log_dir / log_file, when kuryr.conf sets them (dockerd's own "
              "log has Kuryr's lines anyway)")),
}
LOGS_MOUNT = "logs"  # made when missing: the only source build-plugin creates

# Docker gives a plugin a read-only /proc/sys (its default container spec,
# which config.json cannot change) and runc refuses mounts inside /proc.  Kuryr
# writes the sysctls of the veths it makes (IPv6 autoconfiguration off, ...):
# the host's /proc/sys/net, beside /proc, named by KURYR_PROC_SYS_NET as in the
# Kubernetes DaemonSet.  The values are those of the caller's network
# namespace, the host's here.
PROC_SYS_NET = "/host/proc/sys/net"
FIXED_MOUNTS = ({"name": "proc-sys-net", "description": "the host's network sysctls",
                 "source": "/proc/sys/net", "destination": PROC_SYS_NET, "type": "bind",
                 "options": ["rbind", "rw"], "settable": []},)
FIXED_ENV = ({"name": "KURYR_PROC_SYS_NET", "description": "where the network sysctls are",
              "value": PROC_SYS_NET, "settable": []},)

# What `kuryr serve` needs beyond Docker's default capabilities (docs/install.md,
# etc/systemd/kuryr.service say why each): veths and addresses (netlink),
# setns(2) into a container's namespace, published ports below 1024.
CAPABILITIES = ("CAP_NET_ADMIN", "CAP_SYS_ADMIN", "CAP_NET_BIND_SERVICE")
PUSHED_AS = "/opt/kuryr/pushed-as"  # in a pushed plugin: the reference it was pushed as


def config_json(tree: rootfs.Tree) -> dict:
    """The plugin's config.json (Docker's plugin config, v1 schema)."""
    return {
        "description": f"Kuryr {tree.version}: Docker networks and IPAM on OpenStack Neutron "
                       f"(build {tree.build_id})",
        "documentation": DOCUMENTATION,
        "entrypoint": [f"{rootfs.VENV}/bin/kuryr", "serve", "--config-file", CONFIG_FILE],
        "workdir": "/",
        "interface": {"types": ["docker.networkdriver/1.0", "docker.ipamdriver/1.0"],
                      "socket": SOCKET},
        # Containers' veths are made in the host's network namespace, where
        # dockerd moves them from; Neutron and Keystone are reached from it too.
        "network": {"type": "host"},
        "linux": {"capabilities": list(CAPABILITIES)},
        "mounts": [*({"name": name, "description": what, "source": source,
                      "destination": destination, "type": "bind", "options": list(options),
                      "settable": ["source"]}
                     for name, (source, destination, options, what) in MOUNTS.items()),
                   *FIXED_MOUNTS],
        "env": [*({"name": name, "description": what, "settable": ["value"]}
                  for name, what in SETTABLE_ENV),
                *FIXED_ENV],
    }


def settings_args(sources: Mapping[str, str], env: Mapping[str, str]) -> list[str]:
    """`docker plugin set` arguments: mount sources and environment values."""
    unknown = (set(sources) - set(MOUNTS)) | (set(env) - {name for name, _ in SETTABLE_ENV})
    if unknown:
        raise ValueError(f"not a setting of the plugin: {', '.join(sorted(unknown))} "
                         f"(mounts: {', '.join(MOUNTS)}; environment: "
                         f"{', '.join(name for name, _ in SETTABLE_ENV)})")
    return ([f"{name}.source={path}" for name, path in sorted(sources.items())]
            + [f"{name}={value}" for name, value in sorted(env.items())])


def wanted_settings(sources: Mapping[str, str], env: Mapping[str, str]) -> dict:
    """The mount sources and environment the plugin should end up with."""
    mounts = {name: sources.get(name, default) for name, (default, *_) in MOUNTS.items()}
    return {"mounts": mounts, "env": dict(env)}


def installed_settings(inspected: dict) -> dict:
    """The same shape as :func:`wanted_settings`, read from `docker plugin inspect`."""
    settings = inspected.get("Settings") or {}
    mounts = {m.get("Name", ""): m.get("Source", "") for m in settings.get("Mounts") or []
              if m.get("Name") in MOUNTS}  # not the fixed ones
    env = dict(item.split("=", 1) for item in settings.get("Env") or [] if "=" in item)
    return {"mounts": mounts, "env": env}


def needs_settings(installed: dict, wanted: dict) -> bool:
    """Mount sources differ, or a wanted environment value is not set (an
    environment value set earlier and not asked for now stays: Docker cannot
    unset one)."""
    return installed["mounts"] != wanted["mounts"] or any(
        installed["env"].get(name) != value for name, value in wanted["env"].items())


def missing_sources(mounts: Mapping[str, str]) -> list[str]:
    """Mount sources absent from this host, as `mount=path` (Docker would only
    say so at enable, naming the path inside the plugin)."""
    return [f"{name}={path}" for name, path in sorted(mounts.items())
            if name != LOGS_MOUNT and not Path(path).exists()]


class Installer:
    """Makes plugin ``name`` on the dockerd at ``docker_host`` match a tree."""

    def __init__(self, docker_host: str, name: str = DEFAULT_NAME) -> None:
        self.docker_host = docker_host
        self.name = name

    def cli(self, *args: str, timeout: float = 120, check: bool = True) -> str:
        return docker.cli(self.docker_host, *args, timeout=timeout, check=check)

    def inspect(self) -> dict | None:
        out = self.cli("plugin", "inspect", self.name, check=False)
        try:
            found = json.loads(out)
        except ValueError:
            return None
        return found[0] if found else None

    def install(self, tree: rootfs.Tree, sources: Mapping[str, str],
                env: Mapping[str, str]) -> list[str]:
        """Create/replace, configure and enable the plugin; what was done."""
        wanted = wanted_settings(sources, env)
        current = self.inspect()
        done: list[str] = []
        same_build = current is not None and _is_build(current, tree)
        if current and not same_build:
            self.remove()
            done.append(f"removed {self.name} (another build)")
            current = None
        if current is None:
            self._create(tree)
            done.append(f"created {self.name} (Kuryr {tree.version}, build {tree.build_id})")
            current = self.inspect() or {}
        if needs_settings(installed_settings(current), wanted):
            if current.get("Enabled"):
                self.cli("plugin", "disable", "--force", self.name)
            self.cli("plugin", "set", self.name, *settings_args(wanted["mounts"], env))
            done.append("set " + " ".join(settings_args(wanted["mounts"], env)))
            current = self.inspect() or {}
        if not current.get("Enabled"):
            # Enable starts Kuryr and waits for its socket (Docker gives up after ~15 s).
            self.cli("plugin", "enable", "--timeout", "60", self.name, timeout=90)
            done.append(f"enabled {self.name}")
        return done

    def push(self, tree: rootfs.Tree) -> list[str]:
        """Push this build to the registry ``name`` names, for hosts without a
        checkout to `docker plugin install` with their own settings.  The local
        plugin under that name is made for the push and removed after it; one
        that was there before is pushed only if it is this build, and kept."""
        current = self.inspect()
        if current is not None and not _is_build(current, tree):
            raise procs.StackError(
                f"{self.name} is already on this dockerd as another build: remove it "
                "(`docker plugin rm -f`) or push under another tag")
        done: list[str] = []
        if current is None:
            with _push_context(tree, self.name) as context:
                self._create(tree, context)
            done.append(f"created {self.name} (Kuryr {tree.version}, build {tree.build_id})")
        try:
            self.cli("plugin", "push", self.name, timeout=1800)
            done.append(f"pushed {self.name}")
        finally:
            # Ours, made only to be pushed (`plugin rm` names what it removed).
            if current is None and self.cli("plugin", "rm", "--force", self.name,
                                            check=False).strip():
                done.append(f"removed the local {self.name}")
        return done

    def _create(self, tree: rootfs.Tree, context: Path | None = None) -> None:
        # The context directory: rootfs/ and config.json (the tree's parent
        # unless one is given).
        context = context or tree.path.parent
        (context / "config.json").write_text(json.dumps(config_json(tree), indent=1) + "\n")
        self.cli("plugin", "create", self.name, str(context), timeout=600)

    def remove(self) -> None:
        """Disable and remove the plugin (networks that use it stay in Docker)."""
        self.cli("plugin", "disable", "--force", self.name, check=False)
        self.cli("plugin", "rm", "--force", self.name, check=False)


def _is_build(inspected: dict, tree: rootfs.Tree) -> bool:
    """Whether a plugin (`docker plugin inspect`) is this tree's build: the
    build id is kept in its description (see :func:`config_json`)."""
    return tree.build_id in inspected["Config"]["Description"]


@contextlib.contextmanager
def _push_context(tree: rootfs.Tree, reference: str) -> Iterator[Path]:
    """A `plugin create` context for the plugin made to be pushed: the tree
    hard-linked (no copy of its 250 MB) plus PUSHED_AS naming the reference.
    dockerd keeps a plugin's layer by digest and refuses to create a second
    plugin from a layer it holds ("content sha256:...: already exists"): this
    build, enabled here under its usual name, would block the push otherwise."""
    scratch = Path(tempfile.mkdtemp(prefix="push.", dir=tree.path.parent.parent))
    try:
        procs.run(["cp", "-al", str(tree.path), str(scratch / "rootfs")], timeout=300)
        marker = scratch / "rootfs" / PUSHED_AS.lstrip("/")
        marker.unlink(missing_ok=True)  # a new file: never write through a link to the tree
        marker.write_text(f"{reference}\nbuild {tree.build_id}\n")
        yield scratch
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _pairs(items: Sequence[str], what: str) -> dict[str, str]:
    pairs = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise SystemExit(f"build-plugin: {what} {item!r} is not NAME=VALUE")
        pairs[name] = value
    return pairs


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="tools/build-plugin",
        description="Build Kuryr's managed Docker plugin from this checkout (a Debian "
                    "root file system made here, nothing pulled) and create and enable it "
                    "on the dockerd DOCKER_HOST names (`eval \"$(kuryr-aio env)\"`).")
    p.add_argument("--name", default=DEFAULT_NAME, help="plugin reference (%(default)s)")
    p.add_argument("--mount", action="append", default=[], metavar="NAME=HOSTPATH",
                   help=f"host path of a mount ({', '.join(MOUNTS)})")
    p.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                   help="an OS_<GROUP>__<OPTION> setting (overrides kuryr.conf)")
    p.add_argument("--remove", action="store_true", help="disable and remove the plugin")
    p.add_argument("--push", metavar="REGISTRY/NAME:TAG",
                   help="push this build to a registry instead of enabling it here (hosts "
                        "then `docker plugin install --alias kuryr/kuryr:latest` it)")
    args = p.parse_args(argv)
    if args.push and (args.remove or args.mount or args.env
                      or args.name != DEFAULT_NAME):
        p.error("--push takes no --name, --remove, --mount or --env: settings are each "
                "host's, given to `docker plugin install`")
    layout = Layout.default()
    docker_host = os.environ.get("DOCKER_HOST") or layout.docker_host
    installer = Installer(docker_host, args.push or args.name)
    if args.remove:
        installer.remove()
        print(f"build-plugin: {args.name} removed from {docker_host}")
        return 0
    if args.push:
        return _run_build(layout, installer.push)
    sources, env = _pairs(args.mount, "--mount"), _pairs(args.env, "--env")
    try:
        settings_args(sources, env)
    except ValueError as exc:
        raise SystemExit(f"build-plugin: {exc}") from None
    if docker_host.startswith("unix://"):  # this host's dockerd: its paths are ours
        mounts = wanted_settings(sources, env)["mounts"]
        missing = missing_sources(mounts)
        if missing:
            print(f"build-plugin: mount sources missing on this host: {' '.join(missing)} "
                  "(give another with --mount NAME=HOSTPATH)", file=sys.stderr)
            return 2
        Path(mounts[LOGS_MOUNT]).mkdir(mode=0o700, parents=True, exist_ok=True)
    return _run_build(layout, lambda tree: installer.install(tree, sources, env),
                      unchanged=f"{args.name} is already this build ({{build}}), enabled")


def _run_build(layout: Layout, use: Callable[[rootfs.Tree], list[str]],
               unchanged: str = "") -> int:
    """Build (or reuse) the checkout's tree and hand it to ``use`` under the
    build lock (until `plugin create` has copied it); print what was done."""
    try:
        with rootfs.checkout_tree(layout.cache) as tree:
            done = use(tree)
    except procs.StackError as exc:
        print(f"build-plugin: {exc}", file=sys.stderr)
        return 1
    for line in done or [unchanged.format(build=tree.build_id)]:
        print(f"build-plugin: {line}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

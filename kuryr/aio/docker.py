"""dockerd (Debian docker.io) without NAT rules, and a locally made busybox image."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

from kuryr.aio import links, namespaces, procs
from kuryr.aio.layout import Layout

DOCKER_CLI = "/usr/bin/docker"  # the 20.10 client that matches the packaged dockerd
BUSYBOX = Path("/bin/busybox")
IMAGE = "busybox:latest"
DEFAULT_BRIDGE = "docker0"  # made by dockerd at start when missing, left at exit
# Where the stack's dockerd (default exec-root) bind-mounts containers' network
# namespaces.
NETNS_DIR = Path("/run/docker/netns")


def busybox_rootfs() -> bytes:
    """A tar of a minimal root file system: static busybox and its applet links."""
    applets = procs.run([str(BUSYBOX), "--list-full"]).split()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for directory in ("bin", "sbin", "usr/bin", "usr/sbin", "etc", "tmp", "proc", "sys",
                          "dev", "root", "var/www", "run"):
            info = tarfile.TarInfo(directory)
            info.type = tarfile.DIRTYPE
            info.mode = 0o1777 if directory == "tmp" else 0o755
            tar.addfile(info)
        tar.add(str(BUSYBOX), arcname="bin/busybox")
        for applet in applets:
            if applet == "bin/busybox":
                continue
            link = tarfile.TarInfo(applet)
            link.type = tarfile.SYMTYPE
            link.linkname = "/bin/busybox"
            tar.addfile(link)
        for name, text in (("etc/passwd", "root:x:0:0:root:/root:/bin/sh\n"),
                           ("etc/group", "root:x:0:\n")):
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def cli(docker_host: str, *args: str, timeout: float = 60, check: bool = True,
        input_text: str | None = None) -> str:
    return procs.run([DOCKER_CLI, "-H", docker_host, *args],
                     timeout=timeout, check=check, input_text=input_text)


def answers(docker_host: str) -> bool:
    return bool(cli(docker_host, "version", "--format", "{{.Server.Version}}",
                    timeout=10).strip())


def answers_now(docker_host: str) -> bool:
    try:
        return answers(docker_host)
    except procs.StackError:
        return False


def has_image(docker_host: str) -> bool:
    return bool(cli(docker_host, "images", "-q", IMAGE, timeout=10).strip())


def import_busybox(docker_host: str, scratch: Path) -> None:
    """The image IMAGE into that dockerd, made from the host's static busybox
    (``scratch``: a directory for the rootfs tar, removed after)."""
    rootfs = scratch / "busybox-rootfs.tar"
    rootfs.write_bytes(busybox_rootfs())
    try:
        cli(docker_host, "import", "--change", 'CMD ["sh"]', str(rootfs), IMAGE, timeout=120)
    finally:
        rootfs.unlink(missing_ok=True)


def dockerd_argv(*, data_root: Path, pidfile: Path, docker_host: str,
                 exec_root: Path | None = None, bridge: str | None = None) -> list[str]:
    """dockerd without NAT rules or forwarding: Docker must not touch the
    host's firewall here.  ``bridge="none"`` makes no default bridge."""
    return ["dockerd", "--iptables=false", "--ip-masq=false", "--ip-forward=false",
            *([f"--bridge={bridge}"] if bridge else []),
            f"--data-root={data_root}",
            *([f"--exec-root={exec_root}"] if exec_root else []),
            f"--pidfile={pidfile}", f"--host={docker_host}"]


def daemon_problems(pidfile: Path, docker_host: str) -> list[str]:
    if not procs.pid_alive(pidfile, "dockerd"):
        return ["dockerd is not running"]
    try:
        answers(docker_host)
    except procs.StackError as exc:
        return [f"dockerd does not answer on {docker_host}: {exc}"]
    if not has_image(docker_host):
        return [f"image {IMAGE} is missing"]
    return []


class Docker:
    name = "dockerd"

    def __init__(self, layout: Layout) -> None:
        self.layout = layout
        self.pidfile = layout.pidfile("dockerd")

    @property
    def logs(self) -> list[Path]:
        return [self.layout.log("dockerd")]

    def cli(self, *args: str, timeout: float = 60, check: bool = True,
            input_text: str | None = None) -> str:
        return cli(self.layout.docker_host, *args, timeout=timeout, check=check,
                   input_text=input_text)

    def answers(self) -> bool:
        return answers(self.layout.docker_host)

    def has_image(self) -> bool:
        return has_image(self.layout.docker_host)

    def problems(self) -> list[str]:
        return daemon_problems(self.pidfile, self.layout.docker_host)

    def up(self) -> None:
        host = self.layout.docker_host
        if procs.pid_alive(self.pidfile, "dockerd"):
            # It may be shutting down (stopping containers takes up to 10 s).
            procs.wait_for(lambda: answers_now(host) or not procs.running(self.pidfile), 60)
        before = links.existing([DEFAULT_BRIDGE])
        if not procs.pid_alive(self.pidfile, "dockerd"):
            # As on a systemd host: the namespaces dockerd mounts there reach a
            # managed plugin's view of the directory (Kuryr's plugin mounts it
            # rslave); this machine's PID 1 leaves mounts private.
            namespaces.make_shared_mount(NETNS_DIR)
            self.layout.docker_sock.unlink(missing_ok=True)
            # Docker's default exec-root (/var/run/docker): its netns paths
            # are what kuryr-libnetwork (measured by kuryr-bench) accepts.
            procs.spawn(dockerd_argv(data_root=self.layout.base / "docker",
                                     pidfile=self.layout.run / "dockerd.docker.pid",
                                     docker_host=host),
                        pidfile=self.pidfile, log=self.layout.log("dockerd"))
        if not procs.wait_for(lambda: answers_now(host), 60):
            raise procs.StackError(f"dockerd did not answer (log: {self.layout.log('dockerd')})")
        # A docker0 that was there before (the host's own Docker) stays at `down`.
        links.record_new(self.layout, [DEFAULT_BRIDGE], before)
        if not self.has_image():
            import_busybox(host, self.layout.base)

    def down(self) -> None:
        # Containers are stopped by dockerd itself on SIGTERM (their endpoints
        # are released through the plugin, which is still running then).
        procs.stop(self.pidfile, "dockerd", timeout=40)
        # dockerd leaves its default bridge behind when it exits (or dies).
        links.delete_created(self.layout, [DEFAULT_BRIDGE])

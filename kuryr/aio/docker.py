"""dockerd (Debian docker.io) without NAT rules, and a locally made busybox image."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

from kuryr.aio import links, procs
from kuryr.aio.layout import Layout

DOCKER_CLI = "/usr/bin/docker"  # the 20.10 client that matches the packaged dockerd
BUSYBOX = Path("/bin/busybox")
IMAGE = "busybox:latest"
DEFAULT_BRIDGE = "docker0"  # made by dockerd at start when missing, left at exit


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
        return procs.run([DOCKER_CLI, "-H", self.layout.docker_host, *args],
                         timeout=timeout, check=check, input_text=input_text)

    def answers(self) -> bool:
        return bool(self.cli("version", "--format", "{{.Server.Version}}", timeout=10).strip())

    def has_image(self) -> bool:
        return bool(self.cli("images", "-q", IMAGE, timeout=10).strip())

    def problems(self) -> list[str]:
        if not procs.pid_alive(self.pidfile, "dockerd"):
            return ["dockerd is not running"]
        try:
            self.answers()
        except procs.StackError as exc:
            return [f"dockerd does not answer on {self.layout.docker_host}: {exc}"]
        if not self.has_image():
            return [f"image {IMAGE} is missing"]
        return []

    def up(self) -> None:
        if procs.pid_alive(self.pidfile, "dockerd"):
            # It may be shutting down (stopping containers takes up to 10 s).
            procs.wait_for(lambda: self._answers() or not procs.running(self.pidfile), 60)
        before = links.existing([DEFAULT_BRIDGE])
        if not procs.pid_alive(self.pidfile, "dockerd"):
            self.layout.docker_sock.unlink(missing_ok=True)
            # No NAT, no forwarding: Docker must not touch the host's firewall here.
            procs.spawn(
                ["dockerd", "--iptables=false", "--ip-masq=false", "--ip-forward=false",
                 f"--data-root={self.layout.base / 'docker'}",
                 # Docker's default exec-root (/var/run/docker): its netns paths
                 # are what kuryr-libnetwork (measured by kuryr-bench) accepts.
                 f"--pidfile={self.layout.run / 'dockerd.docker.pid'}",
                 f"--host={self.layout.docker_host}"],
                pidfile=self.pidfile, log=self.layout.log("dockerd"),
            )
        if not procs.wait_for(self._answers, 60):
            raise procs.StackError(f"dockerd did not answer (log: {self.layout.log('dockerd')})")
        # A docker0 that was there before (the host's own Docker) stays at `down`.
        links.record_new(self.layout, [DEFAULT_BRIDGE], before)
        if not self.has_image():
            self._import_busybox()

    def _answers(self) -> bool:
        try:
            return self.answers()
        except procs.StackError:
            return False

    def _import_busybox(self) -> None:
        rootfs = self.layout.base / "busybox-rootfs.tar"
        rootfs.write_bytes(busybox_rootfs())
        self.cli("import", "--change", 'CMD ["sh"]', str(rootfs), IMAGE, timeout=120)
        rootfs.unlink()

    def down(self) -> None:
        # Containers are stopped by dockerd itself on SIGTERM (their endpoints
        # are released through the plugin, which is still running then).
        procs.stop(self.pidfile, "dockerd", timeout=40)
        # dockerd leaves its default bridge behind when it exits (or dies).
        links.delete_created(self.layout, [DEFAULT_BRIDGE])

"""Kuryr's Kubernetes image (the node daemon and the controller): ``tools/build-image``.

The image is the Kuryr tree of :mod:`kuryr.aio.rootfs` (Debian bookworm, this
checkout's wheel in a venv at /opt/kuryr), made into an image with `docker
import`: nothing is pulled from a registry.  It is tagged
``kuryr/kuryr-k8s:<version>`` and ``:latest`` on the dockerd DOCKER_HOST names
(kuryr-aio's by default) and, with ``--containerd``, imported into the
all-in-one cluster's containerd too (`docker save` + `ctr images import`), so
pods with ``imagePullPolicy: Never`` find it.

Run again, it changes only what differs: an image whose build-id label is the
tree's is not imported again, a containerd that already has it is left alone.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from kuryr.aio import docker, procs, rootfs
from kuryr.aio.kubernetes import CONTAINERD_NS, Containerd
from kuryr.aio.layout import Layout

REPOSITORY = "kuryr/kuryr-k8s"
# containerd (and kubelet) name images fully: `image: kuryr/kuryr-k8s:latest`
# in a manifest is this reference.
CONTAINERD_PREFIX = "docker.io/"
LABEL_BUILD_ID = "org.openstack.kuryr.build-id"
LABEL_VERSION = "org.opencontainers.image.version"
LABEL_TITLE = "org.opencontainers.image.title"
# containerd, unlike dockerd, gives a process no default PATH: the image's
# config must carry one (`kuryr`, `kuryr-cni-install` are in /usr/local/bin).
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@dataclass(frozen=True)
class Image:
    """What `docker import` makes of a tree."""
    repository: str
    version: str
    build_id: str

    @classmethod
    def of(cls, tree: rootfs.Tree, repository: str = REPOSITORY) -> Image:
        return cls(repository, tree.version, tree.build_id)

    @property
    def tags(self) -> list[str]:
        return [f"{self.repository}:{self.version}", f"{self.repository}:latest"]

    @property
    def labels(self) -> dict[str, str]:
        return {LABEL_TITLE: self.repository.rsplit("/", 1)[-1], LABEL_VERSION: self.version,
                LABEL_BUILD_ID: self.build_id}

    def changes(self) -> list[str]:
        """Dockerfile instructions `docker import --change` applies to the config.
        No ENTRYPOINT: the manifests name the command (`kuryr cni-daemon`,
        `kuryr k8s-controller`, `kuryr-cni-install`); by itself the image
        prints Kuryr's version."""
        labels = " ".join(f"{key}={json.dumps(value)}" for key, value in self.labels.items())
        return [f"ENV PATH={PATH}", "WORKDIR /", 'CMD ["kuryr", "--version"]',
                f"LABEL {labels}"]

    def import_argv(self) -> list[str]:
        """`docker` arguments importing a tar of the tree from stdin as the first tag."""
        argv = ["import"]
        for change in self.changes():
            argv += ["--change", change]
        return [*argv, "-", self.tags[0]]

    def containerd_refs(self) -> list[str]:
        return [CONTAINERD_PREFIX + tag for tag in self.tags]


def tar_argv(tree: Path) -> list[str]:
    """GNU tar of the tree as it is (owners by number), without rootfs' marker."""
    return ["tar", "-C", str(tree), "--numeric-owner", "--xattrs",
            f"--exclude=./{rootfs.COMPLETE}", "-cf", "-", "."]


class Builder:
    """Makes ``image`` exist on the dockerd at ``docker_host`` (and in containerd)."""

    def __init__(self, docker_host: str, image: Image) -> None:
        self.docker_host = docker_host
        self.image = image

    def cli(self, *args: str, timeout: float = 120, check: bool = True) -> str:
        return docker.cli(self.docker_host, *args, timeout=timeout, check=check)

    def image_id(self, ref: str) -> str | None:
        out = self.cli("image", "inspect", "--format", "{{.Id}}", ref, check=False).strip()
        return out or None

    def built_id(self) -> str | None:
        """The id of an image on dockerd labelled with this build, if any."""
        out = self.cli("images", "--no-trunc", "--quiet", "--filter",
                       f"label={LABEL_BUILD_ID}={self.image.build_id}").split()
        return out[0] if out else None

    def ensure(self, tree: rootfs.Tree) -> tuple[str, list[str]]:
        """The image id, and what was done to get it."""
        done: list[str] = []
        found = self.built_id()
        if found is None:
            self._import(tree)
            found = self.image_id(self.image.tags[0])
            if found is None:
                raise procs.StackError(f"docker import left no {self.image.tags[0]}")
            done.append(f"imported {self.image.tags[0]} (build {self.image.build_id}, "
                        f"{self.size_mb(found):.0f} MB) into {self.docker_host}")
        for tag in self.image.tags:
            if self.image_id(tag) != found:
                self.cli("tag", found, tag)
                done.append(f"tagged {tag}")
        done += self.prune(keep=found)
        return found, done

    def prune(self, keep: str) -> list[str]:
        """Earlier builds left untagged by the new one (~200 MB each); one a
        container still uses stays."""
        old = self.cli("images", "--no-trunc", "--quiet", "--filter", "dangling=true",
                       "--filter", f"label={LABEL_BUILD_ID}").split()
        return [f"removed the earlier build {image_id.removeprefix('sha256:')[:12]}"
                for image_id in dict.fromkeys(old)
                if image_id != keep and self.cli("rmi", image_id, check=False).strip()]

    def size_mb(self, image_id: str) -> float:
        return int(self.cli("image", "inspect", "--format", "{{.Size}}", image_id)) / 1e6

    def _import(self, tree: rootfs.Tree) -> None:
        argv = [docker.DOCKER_CLI, "-H", self.docker_host, *self.image.import_argv()]
        with subprocess.Popen(tar_argv(tree.path), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE) as tar:
            assert tar.stdout is not None  # noqa: S101 - for mypy: PIPE was asked
            imported = subprocess.run(argv, stdin=tar.stdout, capture_output=True, text=True,
                                      timeout=900, check=False)
            tar.stdout.close()
            tar_err = tar.stderr.read().decode() if tar.stderr else ""
            tar.wait(timeout=60)
        if tar.returncode != 0:
            raise procs.StackError(f"tar of {tree.path} exited {tar.returncode}: {tar_err}")
        if imported.returncode != 0:
            raise procs.StackError(f"docker import exited {imported.returncode}: "
                                   f"{(imported.stderr or imported.stdout).strip()}")

    def into_containerd(self, containerd: Containerd, image_id: str,
                        scratch: Path) -> list[str]:
        """Import the image's tags into containerd (`docker save` + `ctr import`),
        unless containerd has them already with this image's config."""
        wanted = self.image.containerd_refs()
        done = []
        if any(containerd_config_digest(containerd, ref) != image_id for ref in wanted):
            archive = scratch / "kuryr-k8s-image.tar"
            try:
                self.cli("save", "-o", str(archive), *self.image.tags, timeout=600)
                containerd.ctr("images", "import", str(archive), timeout=600)
            finally:
                archive.unlink(missing_ok=True)
            done.append(f"imported {' '.join(wanted)} into containerd {containerd.socket} "
                        f"(namespace {CONTAINERD_NS})")
        return done + prune_containerd(containerd, keep=image_id)


def remove(docker_host: str, repository: str = REPOSITORY) -> list[str]:
    """Remove every tag of ``repository`` from dockerd (containerd's copy stays)."""
    tags = docker.cli(docker_host, "images", "--format", "{{.Repository}}:{{.Tag}}",
                      repository, timeout=60).split()
    for tag in tags:
        docker.cli(docker_host, "rmi", tag, timeout=120)
    return [f"removed {tag}" for tag in tags]


def containerd_images(containerd: Containerd, *filters: str) -> list[tuple[str, str]]:
    """(name, manifest digest) of containerd's images (`ctr images list`)."""
    try:
        listing = containerd.ctr("images", "list", *filters, timeout=30)
    except procs.StackError:
        return []
    rows = []
    for line in listing.splitlines()[1:]:  # REF TYPE DIGEST SIZE PLATFORMS LABELS
        ref, _media_type, digest, *_ = [*line.split(), "", "", ""]
        if ref and digest:
            rows.append((ref, digest))
    return rows


def containerd_config_digest(containerd: Containerd, ref: str) -> str | None:
    """The config digest of image ``ref`` in containerd (= dockerd's image id
    of the image it was saved from), None when containerd lacks it."""
    found = containerd_images(containerd, f"name=={ref}")
    if not found:
        return None
    manifest = _content(containerd, found[0][1])
    digest = (manifest.get("config") or {}).get("digest")
    return digest if isinstance(digest, str) else None


def prune_containerd(containerd: Containerd, keep: str) -> list[str]:
    """Earlier builds containerd still keeps under their id: the CRI plugin
    names an image it manages ``sha256:<config digest>`` too, and that name
    outlives a new import under the tags."""
    images = containerd_images(containerd)
    named = {digest for ref, digest in images if not ref.startswith("sha256:")}
    removed = []
    for ref, digest in images:
        if not ref.startswith("sha256:") or ref == keep or digest in named:
            continue
        labels = (_content(containerd, ref).get("config") or {}).get("Labels") or {}
        if LABEL_BUILD_ID in labels:
            containerd.ctr("images", "remove", ref, timeout=60)
            removed.append(f"removed the earlier build {ref.removeprefix('sha256:')[:12]} "
                           "from containerd")
    return removed


def _content(containerd: Containerd, digest: str) -> dict:
    """A JSON blob of containerd's content store ({} when absent or not JSON)."""
    try:
        found = json.loads(containerd.ctr("content", "get", digest, timeout=30))
    except (procs.StackError, ValueError):
        return {}
    return found if isinstance(found, dict) else {}


def build(layout: Layout, *, docker_host: str, repository: str = REPOSITORY,
          containerd: bool = False) -> tuple[Image, list[str]]:
    """Make (or find) the tree and the image; the image and what was done."""
    with rootfs.checkout_tree(layout.cache) as tree:
        image = Image.of(tree, repository)
        builder = Builder(docker_host, image)
        image_id, done = builder.ensure(tree)
    if containerd:
        scratch = Path(tempfile.mkdtemp(prefix="image.", dir=rootfs.cache_dir(layout.cache)))
        try:
            done += builder.into_containerd(Containerd(layout), image_id, scratch)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    return image, done


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="tools/build-image",
        description="Build Kuryr's Kubernetes image (node daemon and controller) from this "
                    "checkout: a Debian root file system made here, imported with `docker "
                    "import` (nothing pulled) on the dockerd DOCKER_HOST names "
                    "(`eval \"$(kuryr-aio env)\"`).")
    p.add_argument("--repository", default=REPOSITORY,
                   help="image name, tagged :<version> and :latest (%(default)s)")
    p.add_argument("--containerd", action="store_true",
                   help="also import it into the kuryr-aio cluster's containerd "
                        f"(namespace {CONTAINERD_NS}), for pods with imagePullPolicy: Never")
    p.add_argument("--remove", action="store_true",
                   help="remove the repository's tags from dockerd")
    args = p.parse_args(argv)
    if os.geteuid() != 0:
        print("build-image: must run as root (debootstrap, chroot)", file=sys.stderr)
        return 2
    layout = Layout.default()
    docker_host = os.environ.get("DOCKER_HOST") or layout.docker_host
    if args.remove:
        for line in remove(docker_host, args.repository) or [f"no {args.repository} image"]:
            print(f"build-image: {line}")
        return 0
    try:
        image, done = build(layout, docker_host=docker_host, repository=args.repository,
                            containerd=args.containerd)
    except procs.StackError as exc:
        print(f"build-image: {exc}", file=sys.stderr)
        return 1
    for line in done or [f"{' and '.join(image.tags)} are already build {image.build_id}"
                         + (" (in containerd too)" if args.containerd else "")]:
        print(f"build-image: {line}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""A Debian root file system with Kuryr installed in it, made on this machine.

The managed Docker plugin (``tools/build-plugin``) and the Kubernetes image
(``tools/build-image``) both run Kuryr from it.  Nothing is pulled from a
container registry: Debian's base comes from Debian's archive (debootstrap),
Kuryr is this checkout's wheel, its dependencies come from PyPI as wheels.

Three layers, each cached under ``<cache>/rootfs`` (outside what
``kuryr-aio down --purge`` wipes), each keyed by what makes it:

- the Debian base: by suite, mirror and package list (a minute to make), made
  again when older than BASE_MAX_AGE_DAYS (Debian's security updates);
- the wheelhouse: Kuryr's dependencies as wheels (pip asks the index only when
  a requirement is not already there);
- the Kuryr tree: the base plus a venv at /opt/kuryr with the wheel installed,
  keyed by the wheel's *contents* (zip timestamps differ between builds of the
  same source), so an unchanged checkout reuses it.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import sys
import tempfile
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from kuryr.aio import procs

SUITE = os.environ.get("KURYR_ROOTFS_SUITE", "bookworm")
MIRROR = os.environ.get("KURYR_ROOTFS_MIRROR", "http://deb.debian.org/debian")
# python3-venv brings ensurepip (Debian's python3 has none without it);
# ca-certificates lets Kuryr verify Keystone's and Neutron's TLS certificates.
PACKAGES = ("python3", "python3-venv", "ca-certificates")
VENV = "/opt/kuryr"  # inside the tree
WHEELS_INSIDE = "/opt/kuryr-wheels"  # inside the tree while Kuryr is installed, then removed
COMPLETE = ".kuryr-complete"  # written last: a tree without it is half made
KEEP_TREES = 2  # Kuryr trees kept in the cache (the newest)
# Debian's security updates reach the images only through a new base: one
# older than this is made again (then every tree on it, via the build id).
BASE_MAX_AGE_DAYS = float(os.environ.get("KURYR_ROOTFS_MAX_AGE_DAYS", "14"))


@dataclass(frozen=True)
class Tree:
    """A made root file system: ``path`` is the directory to use as rootfs."""
    path: Path
    build_id: str  # 16 hex: the Kuryr wheel's contents and the base it sits on
    version: str


def cache_dir(cache: Path) -> Path:
    return cache / "rootfs"


@contextlib.contextmanager
def build_lock(cache: Path) -> Iterator[None]:
    """One user of the cache's trees at a time: :func:`kuryr_tree` rewrites its
    work directory and drops older trees, which an image import or a plugin
    create of another build may be reading.  Hold it from the build until the
    tree has been copied out (tools/build-image, tools/build-plugin)."""
    path = cache_dir(cache) / "build.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def base_key(suite: str = SUITE, mirror: str = MIRROR,
             packages: tuple[str, ...] = PACKAGES) -> str:
    text = "\n".join((suite, mirror, *sorted(packages)))
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def is_complete(tree: Path) -> bool:
    return (tree / COMPLETE).is_file()


def base_age_days(tree: Path) -> float:
    """Days since ``tree`` was completed (its completion mark's mtime)."""
    return (time.time() - (tree / COMPLETE).stat().st_mtime) / 86400


def debian_base(cache: Path, *, log: Path, max_age_days: float = BASE_MAX_AGE_DAYS) -> Path:
    """Debian ``SUITE`` (minbase + PACKAGES), made with debootstrap and made
    again when older than ``max_age_days``.  A refresh that fails (Debian's
    archive out of reach) keeps the old base, with a warning."""
    path = cache_dir(cache) / f"debian-{SUITE}-{base_key()}"
    if not is_complete(path):
        return _debootstrap(path, log=log)
    age = base_age_days(path)
    if age < max_age_days:
        return path
    try:
        return _debootstrap(path, log=log)
    except procs.StackError as exc:
        print(f"rootfs: the Debian base is {age:.0f} days old and could not be made again "
              f"({exc}); using it as it is", file=sys.stderr)
        return path


def _debootstrap(path: Path, *, log: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f"{path.name}.", dir=path.parent))
    scratch.chmod(0o755)  # it becomes "/": mkdtemp's 0700 would shut non-root users out
    try:
        procs.run(["debootstrap", "--variant=minbase", f"--include={','.join(PACKAGES)}",
                   SUITE, str(scratch), MIRROR], log=log, timeout=1800)
        # Package caches, documentation and translations are not needed to
        # run: ~55 MB less in every image made from the tree.
        for leftovers in ("var/cache/apt/archives", "var/lib/apt/lists"):
            for item in (scratch / leftovers).glob("*"):
                if item.is_file():
                    item.unlink()
        for docs in ("usr/share/doc", "usr/share/man", "usr/share/info", "usr/share/locale"):
            shutil.rmtree(scratch / docs, ignore_errors=True)
        # The date makes a refreshed base another build (see kuryr_tree's build id).
        (scratch / COMPLETE).write_text(f"debootstrap {SUITE} {MIRROR} {' '.join(PACKAGES)} "
                                        f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}\n")
        shutil.rmtree(path, ignore_errors=True)
        scratch.rename(path)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return path


def build_wheel(source: Path, out: Path, *, log: Path) -> Path:
    """The checkout's wheel, built from its sdist as a release is (no download:
    the running venv's setuptools and `build`)."""
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("kuryr-*"):
        old.unlink()
    procs.run([sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out),
               str(source)], log=log, timeout=300, cwd=out)
    (wheel,) = out.glob("kuryr-*-py3-none-any.whl")
    return wheel


def wheel_digest(wheel: Path) -> str:
    """A digest of the wheel's member names and bytes, not its zip dates."""
    digest = hashlib.sha256()
    with zipfile.ZipFile(wheel) as zf:
        for info in sorted(zf.infolist(), key=lambda i: i.filename):
            digest.update(info.filename.encode() + b"\0")
            digest.update(hashlib.sha256(zf.read(info)).digest())
    return digest.hexdigest()


def tree_build_id(base: Path, wheel_contents: str) -> str:
    """16 hex naming a Kuryr tree: its base (which, and when it was made: a
    refreshed base is a new build) and the wheel's contents."""
    made = (base / COMPLETE).read_text()
    return hashlib.sha256(f"{base.name}\n{made}\n{wheel_contents}".encode()).hexdigest()[:16]


def fill_wheelhouse(wheel: Path, wheelhouse: Path, *, log: Path) -> None:
    """Wheels of everything ``wheel`` needs.  Offline first (what the cache
    has); the index only when that is not enough."""
    wheelhouse.mkdir(parents=True, exist_ok=True)
    pip = [sys.executable, "-m", "pip", "wheel", "-q", "--find-links", str(wheelhouse),
           "--wheel-dir", str(wheelhouse)]
    try:
        procs.run([*pip, "--no-index", str(wheel)], log=log, timeout=300)
    except procs.StackError:
        procs.run([*pip, str(wheel)], log=log, timeout=1200)
    for copied in wheelhouse.glob("kuryr-*.whl"):
        copied.unlink()  # the checkout's own: never resolved from the cache


def kuryr_tree(source: Path, cache: Path, *, log: Path) -> Tree:
    """The Debian base with Kuryr (this checkout) in a venv at /opt/kuryr and
    its commands on PATH; reused when the checkout's wheel is unchanged."""
    base = debian_base(cache, log=log)
    work = cache_dir(cache) / "work"
    wheel = build_wheel(source, work / "dist", log=log)
    version = wheel.name.split("-")[1]
    build_id = tree_build_id(base, wheel_digest(wheel))
    home = cache_dir(cache) / f"kuryr-{build_id}"
    tree = home / "rootfs"
    if is_complete(tree):
        return Tree(tree, build_id, version)
    fill_wheelhouse(wheel, cache_dir(cache) / "wheelhouse", log=log)
    shutil.rmtree(home, ignore_errors=True)
    home.mkdir(parents=True)
    procs.run(["cp", "-a", "--reflink=auto", str(base), str(tree)], log=log, timeout=600)
    tree.chmod(0o755)  # "/" (a base made before that was fixed is 0700)
    (tree / COMPLETE).unlink()
    _install_kuryr(tree, wheel, cache_dir(cache) / "wheelhouse", log=log)
    (tree / COMPLETE).write_text(f"kuryr {version} {wheel_digest(wheel)}\n")
    _drop_old_trees(cache, keep=home)
    return Tree(tree, build_id, version)


@contextlib.contextmanager
def checkout_tree(cache: Path) -> Iterator[Tree]:
    """The tree of the checkout this module runs from, under the build lock for
    as long as the caller copies it out (tools/build-plugin, tools/build-image)."""
    source = Path(__file__).resolve().parents[2]
    if not (source / "pyproject.toml").is_file():
        raise procs.StackError(f"{source} is not a Kuryr checkout: the plugin and the image "
                               "are built from a checkout's wheel")
    log = cache_dir(cache) / "build.log"
    with build_lock(cache):  # makes cache_dir
        yield kuryr_tree(source, cache, log=log)


def _install_kuryr(tree: Path, wheel: Path, wheelhouse: Path, *, log: Path) -> None:
    inside = tree / WHEELS_INSIDE.lstrip("/")
    shutil.copytree(wheelhouse, inside)
    shutil.copy2(wheel, inside)
    try:
        # chroot: the tree's own python3 makes the venv and installs into it,
        # so the venv's paths and interpreter are the tree's, not this host's.
        procs.run(["chroot", str(tree), "python3", "-m", "venv", VENV], log=log, timeout=300)
        procs.run(["chroot", str(tree), f"{VENV}/bin/pip", "install", "-q", "--no-index",
                   "--find-links", WHEELS_INSIDE, f"{WHEELS_INSIDE}/{wheel.name}"],
                  log=log, timeout=600)
        # Installing is done: pip and setuptools are not needed to run (~23 MB).
        procs.run(["chroot", str(tree), f"{VENV}/bin/python", "-m", "pip", "uninstall", "-q",
                   "-y", "pip", "setuptools"], log=log, timeout=120)
    finally:
        shutil.rmtree(inside, ignore_errors=True)
    for command in ("kuryr", "kuryr-cni", "kuryr-cni-install"):
        link = tree / "usr" / "local" / "bin" / command
        link.unlink(missing_ok=True)
        link.symlink_to(f"{VENV}/bin/{command}")


def _drop_old_trees(cache: Path, *, keep: Path) -> None:
    """Kuryr trees are ~200 MB: keep the newest KEEP_TREES."""
    trees = sorted((p for p in cache_dir(cache).glob("kuryr-*") if p != keep),
                   key=lambda p: p.stat().st_mtime, reverse=True)
    for old in trees[KEEP_TREES - 1:]:
        shutil.rmtree(old, ignore_errors=True)

"""`kuryr-aio build-k8s`: Kubernetes 1.20 binaries built from Debian 12's source.

No package registry ships kube-apiserver or kubelet for Debian 12, but its
source package `kubernetes` (1.20.5+really1.20.2, with vendor/) builds with
Debian's Go 1.19.  This fetches that source with `apt-get source` (through a
deb-src file of its own that mirrors the host's deb entries), builds only the
four binaries the stack needs the way debian/rules does (`make WHAT=cmd/...`:
GOPATH mode, generated code first, CGO off), and keeps them under
/var/cache/kuryr-aio/kubernetes-<version>/bin, which `down --purge` does not
touch.  A stamp written last records the Debian source version; with it and
all four binaries present, a second run returns at once.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from kuryr.aio import packages, procs
from kuryr.aio.layout import KUBERNETES_VERSION, Layout

SOURCE_PACKAGE = "kubernetes"
COMPONENTS = ("kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubelet")
# command -> Debian package: the source package's Build-Depends that the four
# targets use (bash-completion and debhelper serve only the .deb packaging),
# and dpkg-source, which `apt-get source` unpacks with.
BUILD_DEPS = {
    "go": "golang-go",
    "jq": "jq",
    "rsync": "rsync",
    "make": "make",
    "dpkg-source": "dpkg-dev",
}
DEBIAN_SOURCES = Path("/etc/apt/sources.list.d/debian.sources")
SRC_SOURCES = Path("/etc/apt/sources.list.d/kuryr-aio-src.sources")
STAMP = ".source-version"
EXTRACTED = ".kuryr-aio-extracted"
# deb822 fields a deb-src stanza copies from its deb twin.
_KEPT_FIELDS = ("URIs", "Suites", "Components", "Signed-By")
BUILD_TIMEOUT = 3600.0


def say(message: str) -> None:
    print(f"kuryr-aio: {message}", flush=True)


# -- pure parts ---------------------------------------------------------------

def upstream_version(debian_version: str) -> str:
    """The upstream release in a Debian version: "1.20.5+really1.20.2-1.1+deb12u1"
    -> "1.20.2" (epoch and revision dropped; "+reallyX" means the source is X)."""
    version = debian_version.split(":", 1)[-1]
    if "-" in version:
        version = version.rsplit("-", 1)[0]
    return version.rsplit("+really", 1)[-1]


def source_tree_name(debian_version: str) -> str:
    """The directory `apt-get source` unpacks into: package-upstream (no epoch/revision)."""
    version = debian_version.split(":", 1)[-1]
    if "-" in version:
        version = version.rsplit("-", 1)[0]
    return f"{SOURCE_PACKAGE}-{version}"


def deb_src_sources(debian_sources: str) -> str:
    """A deb822 file with a deb-src stanza for each deb stanza of ``debian_sources``
    (same URIs, suites, components and key)."""
    stanzas = []
    for block in re.split(r"\n\s*\n", debian_sources):
        fields: dict[str, str] = {}
        for line in block.splitlines():
            if line.startswith("#") or ":" not in line or line[:1].isspace():
                continue
            key, value = line.split(":", 1)
            fields[key.strip()] = value.strip()
        if "deb" not in fields.get("Types", "").split() or "URIs" not in fields:
            continue
        lines = ["Types: deb-src"]
        lines += [f"{key}: {fields[key]}" for key in _KEPT_FIELDS if key in fields]
        stanzas.append("\n".join(lines) + "\n")
    if not stanzas:
        return ""
    header = ("# Written by kuryr-aio build-k8s: the source packages of the suites in "
              f"{DEBIAN_SOURCES.name}.\n")
    return header + "\n".join(stanzas)


def dsc_version(print_uris: str) -> str | None:
    """The version `apt-get source --print-uris` would fetch (from its .dsc name)."""
    match = re.search(rf"\s{re.escape(SOURCE_PACKAGE)}_(\S+)\.dsc\s", print_uris)
    return match.group(1) if match else None


def reported_version(version_output: str) -> str | None:
    """"Kubernetes v1.20.2" (what the binaries print for --version) -> "1.20.2"."""
    match = re.search(r"Kubernetes v(\S+)", version_output)
    return match.group(1) if match else None


def built_version(bin_dir: Path, components: Sequence[str] = COMPONENTS) -> str | None:
    """The Debian source version the binaries in ``bin_dir`` were built from, or
    None when the stamp or any binary is missing (an unfinished build)."""
    try:
        version = (bin_dir / STAMP).read_text().strip()
    except OSError:
        return None
    if not version:
        return None
    for name in components:
        binary = bin_dir / name
        if not binary.is_file() or not os.access(binary, os.X_OK):
            return None
    return version


def is_built(bin_dir: Path, upstream: str = KUBERNETES_VERSION) -> bool:
    """Whether ``bin_dir`` holds all the binaries, built from a source of ``upstream``."""
    version = built_version(bin_dir)
    return version is not None and upstream_version(version) == upstream


def make_command(tree: Path, component: str) -> list[str]:
    """How debian/rules builds a binary, for one target."""
    return ["make", "-C", str(tree), f"WHAT=cmd/{component}"]


def build_env(workdir: Path) -> dict[str, str]:
    # As debian/rules: static binaries, a HOME of their own.  hack/lib sets
    # GO111MODULE=off (GOPATH mode on vendor/) and its own GOPATH/GOCACHE
    # under _output/ itself.
    return {"HOME": str(workdir / "home"), "CGO_ENABLED": "0", "GOFLAGS": ""}


def elapsed(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    return f"{minutes} min {secs:02d} s" if minutes else f"{secs} s"


# -- steps --------------------------------------------------------------------

def run_logged(argv: Sequence[str], *, log: Path, env: Mapping[str, str] | None = None,
               cwd: Path | None = None, timeout: float = BUILD_TIMEOUT) -> None:
    """Run a long command with its output streamed into ``log`` as it comes."""
    with log.open("a") as fh:
        fh.write(f"$ {' '.join(argv)}\n")
        fh.flush()
        try:
            proc = subprocess.run(
                list(argv), stdin=subprocess.DEVNULL, stdout=fh, stderr=subprocess.STDOUT,
                env={**os.environ, **(env or {})}, cwd=cwd, timeout=timeout, check=False,
            )
        except FileNotFoundError as exc:
            raise procs.StackError(f"{argv[0]} is not installed") from exc
        except subprocess.TimeoutExpired as exc:
            raise procs.StackError(f"{' '.join(argv)} did not finish in {timeout:.0f} s "
                                   f"(log: {log})") from exc
    if proc.returncode != 0:
        tail = log.read_text(errors="replace").strip().splitlines()[-5:]
        raise procs.StackError(f"{' '.join(argv)} exited {proc.returncode} (log: {log}): "
                               + " | ".join(tail))


def ensure_deb_src(target: Path = SRC_SOURCES, debian_sources: Path = DEBIAN_SOURCES) -> bool:
    """Write the deb-src file unless it already says the same; True when written."""
    try:
        wanted = deb_src_sources(debian_sources.read_text())
    except OSError as exc:
        raise procs.StackError(f"cannot read {debian_sources}: {exc}") from exc
    if not wanted:
        raise procs.StackError(f"{debian_sources} has no deb entry to mirror as deb-src")
    try:
        if target.read_text() == wanted:
            return False
    except FileNotFoundError:
        pass
    target.write_text(wanted)
    return True


def source_version(build_log: Path, refresh: bool) -> str:
    """The version of the source package apt would fetch (after apt-get update
    when the deb-src file is new, or when apt does not know the package yet)."""
    env = {"DEBIAN_FRONTEND": "noninteractive"}
    if refresh:
        procs.run(["apt-get", "update", "-q"], log=build_log, env=env, timeout=900)
    argv = ["apt-get", "source", "--print-uris", "-q", SOURCE_PACKAGE]
    try:
        out = procs.run(argv, log=build_log, env=env)
    except procs.StackError:
        if refresh:
            raise
        procs.run(["apt-get", "update", "-q"], log=build_log, env=env, timeout=900)
        out = procs.run(argv, log=build_log, env=env)
    version = dsc_version(out)
    if version is None:
        raise procs.StackError(f"apt-get source --print-uris named no {SOURCE_PACKAGE} .dsc "
                               f"(log: {build_log})")
    if upstream_version(version) != KUBERNETES_VERSION:
        raise procs.StackError(f"apt offers {SOURCE_PACKAGE} {version}, not upstream "
                               f"{KUBERNETES_VERSION}: update KUBERNETES_VERSION")
    return version


def fetch_source(workdir: Path, version: str, build_log: Path,
                 log: Callable[[str], None]) -> Path:
    """The unpacked source tree of ``version`` (patches applied); unpacked again
    only when a previous unpack did not finish or was of another version."""
    src = workdir / "src"
    tree = src / source_tree_name(version)
    marker = src / EXTRACTED
    try:
        if marker.read_text().strip() == version and (tree / "Makefile").is_file():
            return tree
    except FileNotFoundError:
        pass
    shutil.rmtree(src, ignore_errors=True)
    src.mkdir(parents=True)
    t0 = time.monotonic()
    log(f"fetching the source package {SOURCE_PACKAGE} {version} (apt-get source) ...")
    procs.run(["apt-get", "source", "-q", f"{SOURCE_PACKAGE}={version}"], log=build_log,
              env={"DEBIAN_FRONTEND": "noninteractive"}, cwd=src, timeout=900)
    if not (tree / "Makefile").is_file():
        raise procs.StackError(f"apt-get source left no {tree} (log: {build_log})")
    marker.write_text(f"{version}\n")
    log(f"source unpacked in {elapsed(time.monotonic() - t0)}: {tree}")
    return tree


def install_binary(built: Path, target: Path) -> None:
    """Copy ``built`` over ``target`` atomically (a running binary is not overwritten)."""
    tmp = target.with_name(f".{target.name}.tmp")
    shutil.copy2(built, tmp)
    tmp.chmod(0o755)
    tmp.replace(target)


def check_versions(bin_dir: Path, build_log: Path) -> None:
    for name in COMPONENTS:
        out = procs.run([str(bin_dir / name), "--version"], log=build_log, timeout=60)
        if reported_version(out) != KUBERNETES_VERSION:
            raise procs.StackError(f"{bin_dir / name} --version says {out.strip()!r}, "
                                   f"not v{KUBERNETES_VERSION}")


def build(layout: Layout, log: Callable[[str], None] = say) -> Path:
    """kube-apiserver, kube-controller-manager, kube-scheduler and kubelet in
    ``layout.kubernetes_bin``, built unless already there; returns that directory."""
    started = time.monotonic()
    bin_dir = layout.kubernetes_bin
    if is_built(bin_dir):
        log(f"Kubernetes v{KUBERNETES_VERSION} already built from {SOURCE_PACKAGE} "
            f"{built_version(bin_dir)}: {bin_dir}")
        return bin_dir
    if os.geteuid() != 0:
        raise procs.StackError("building Kubernetes needs root (apt-get)")
    workdir = layout.kubernetes_dir
    workdir.mkdir(parents=True, exist_ok=True)
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / STAMP).unlink(missing_ok=True)  # set again only once all is built
    (workdir / "home").mkdir(exist_ok=True)
    build_log = workdir / "build.log"
    log(f"building Kubernetes v{KUBERNETES_VERSION} into {bin_dir} (log: {build_log})")
    missing = packages.missing_packages(BUILD_DEPS)
    if missing:
        log(f"installing build dependencies: {' '.join(missing)}")
        packages.install(missing, log=build_log)
    version = source_version(build_log, refresh=ensure_deb_src())
    tree = fetch_source(workdir, version, build_log, log)
    for i, name in enumerate(COMPONENTS, 1):
        t0 = time.monotonic()
        first = " (generates code first)" if i == 1 else ""
        log(f"building {name} ({i}/{len(COMPONENTS)}){first} ...")
        run_logged(make_command(tree, name), log=build_log, env=build_env(workdir))
        install_binary(tree / "_output" / "bin" / name, bin_dir / name)
        log(f"{name} built in {elapsed(time.monotonic() - t0)} "
            f"(total {elapsed(time.monotonic() - started)})")
    check_versions(bin_dir, build_log)
    (bin_dir / STAMP).write_text(f"{version}\n")
    size = procs.run(["du", "-sh", str(workdir)], timeout=120).split()[0]
    log(f"Kubernetes v{KUBERNETES_VERSION} built in {elapsed(time.monotonic() - started)} "
        f"({workdir} now holds {size}): {bin_dir}")
    return bin_dir

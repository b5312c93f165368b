"""`kuryr-aio build-k8s`: the decisions and command lines, without building anything."""

import time

import pytest

from kuryr.aio import kubernetes_build as kb
from kuryr.aio.layout import KUBERNETES_VERSION, Layout

DEB_VERSION = "1.20.5+really1.20.2-1.1+deb12u1"

DEBIAN_SOURCES = """\
Types: deb
# http://snapshot.debian.org/archive/debian/20250520T000000Z
URIs: http://deb.debian.org/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://deb.debian.org/debian-security
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
"""


def _layout(tmp_path):
    return Layout(base=tmp_path / "state", run=tmp_path / "run", host="h1",
                  cache=tmp_path / "cache")


def _fake_build(bin_dir, version=DEB_VERSION, components=kb.COMPONENTS):
    bin_dir.mkdir(parents=True, exist_ok=True)
    for name in components:
        binary = bin_dir / name
        binary.write_text("#!/bin/sh\necho Kubernetes v1.20.2\n")
        binary.chmod(0o755)
    if version is not None:
        (bin_dir / kb.STAMP).write_text(f"{version}\n")


def test_upstream_version_and_tree_name_of_debians_version():
    assert kb.upstream_version(DEB_VERSION) == "1.20.2"
    assert kb.upstream_version("1:1.21.0-1") == "1.21.0"
    assert kb.source_tree_name(DEB_VERSION) == "kubernetes-1.20.5+really1.20.2"
    assert kb.source_tree_name("2:1.2-3") == "kubernetes-1.2"


def test_cache_is_outside_what_purge_wipes(tmp_path):
    layout = _layout(tmp_path)
    assert layout.kubernetes_bin == tmp_path / "cache" / f"kubernetes-{KUBERNETES_VERSION}" / "bin"
    # `down --purge` empties base (but venvs) and run: the cache is neither.
    default = Layout.default()
    for lay in (layout, default):
        assert not lay.kubernetes_dir.is_relative_to(lay.base)
        assert not lay.kubernetes_dir.is_relative_to(lay.run)


def test_built_only_with_stamp_and_every_binary(tmp_path):
    bin_dir = tmp_path / "bin"
    assert kb.built_version(bin_dir) is None
    assert not kb.is_built(bin_dir)
    _fake_build(bin_dir, version=None)  # binaries of a build cut short: no stamp
    assert not kb.is_built(bin_dir)
    (bin_dir / kb.STAMP).write_text(f"{DEB_VERSION}\n")
    assert kb.built_version(bin_dir) == DEB_VERSION
    assert kb.is_built(bin_dir)
    (bin_dir / "kube-scheduler").unlink()
    assert not kb.is_built(bin_dir)


def test_a_stamp_of_another_release_is_not_built(tmp_path):
    bin_dir = tmp_path / "bin"
    _fake_build(bin_dir, version="1.19.4-1")
    assert kb.built_version(bin_dir) == "1.19.4-1"
    assert not kb.is_built(bin_dir)
    assert kb.is_built(bin_dir, upstream="1.19.4")


def test_a_non_executable_binary_is_not_built(tmp_path):
    bin_dir = tmp_path / "bin"
    _fake_build(bin_dir)
    (bin_dir / "kubelet").chmod(0o644)
    assert kb.built_version(bin_dir) is None


def test_build_is_a_quick_no_op_when_built(tmp_path, monkeypatch):
    layout = _layout(tmp_path)
    _fake_build(layout.kubernetes_bin)

    def boom(*_args, **_kwargs):
        raise AssertionError("nothing may run when the binaries are there")

    monkeypatch.setattr(kb.procs, "run", boom)
    monkeypatch.setattr(kb, "run_logged", boom)
    monkeypatch.setattr(kb.packages, "missing_packages", boom)
    said = []
    t0 = time.monotonic()
    assert kb.build(layout, log=said.append) == layout.kubernetes_bin
    assert time.monotonic() - t0 < 1
    assert "already built" in said[0]


def test_make_command_builds_one_target_as_debian_rules_does(tmp_path):
    tree = tmp_path / "kubernetes-1.20.5+really1.20.2"
    assert kb.make_command(tree, "kubelet") == ["make", "-C", str(tree), "WHAT=cmd/kubelet"]
    env = kb.build_env(tmp_path)
    assert env["CGO_ENABLED"] == "0"
    assert env["HOME"] == str(tmp_path / "home")
    assert set(kb.COMPONENTS) == {"kube-apiserver", "kube-controller-manager",
                                  "kube-scheduler", "kubelet"}


def test_deb_src_file_mirrors_every_deb_stanza():
    text = kb.deb_src_sources(DEBIAN_SOURCES)
    stanzas = [s for s in text.split("\n\n") if "Types:" in s]
    assert len(stanzas) == 2
    assert all("Types: deb-src\n" in s for s in stanzas)
    assert "Suites: bookworm bookworm-updates\n" in stanzas[0]
    assert "URIs: http://deb.debian.org/debian-security\n" in stanzas[1]
    assert "Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg" in stanzas[1]
    assert "snapshot" not in text  # comments are not copied
    assert kb.deb_src_sources("Types: deb-src\nURIs: http://x\nSuites: a\n") == ""


def test_ensure_deb_src_writes_once(tmp_path):
    debian = tmp_path / "debian.sources"
    debian.write_text(DEBIAN_SOURCES)
    target = tmp_path / "kuryr-aio-src.sources"
    assert kb.ensure_deb_src(target, debian) is True
    assert kb.ensure_deb_src(target, debian) is False
    target.write_text("stale\n")
    assert kb.ensure_deb_src(target, debian) is True
    empty = tmp_path / "empty.sources"
    empty.write_text("")
    with pytest.raises(kb.procs.StackError, match="no deb entry"):
        kb.ensure_deb_src(tmp_path / "other.sources", empty)


def test_dsc_version_from_print_uris():
    out = (
        "Reading package lists...\n"
        "NOTICE: 'kubernetes' packaging is maintained in the 'Git' version control system\n"
        f"'http://deb.debian.org/debian-security/pool/updates/main/k/kubernetes/"
        f"kubernetes_{DEB_VERSION}.dsc' kubernetes_{DEB_VERSION}.dsc 1973 SHA256:ab\n"
        f"'http://x/kubernetes_1.20.5+really1.20.2.orig.tar.gz' "
        f"kubernetes_1.20.5+really1.20.2.orig.tar.gz 34428927 SHA256:cd\n"
    )
    assert kb.dsc_version(out) == DEB_VERSION
    assert kb.dsc_version("E: Unable to find a source package for kubernetes\n") is None


def test_reported_version():
    assert kb.reported_version("Kubernetes v1.20.2\n") == "1.20.2"
    assert kb.reported_version("Kubernetes v0.0.0-master+$Format:%h$\n") == \
        "0.0.0-master+$Format:%h$"
    assert kb.reported_version("usage: ...") is None


def test_source_already_unpacked_is_kept(tmp_path):
    tree = tmp_path / "src" / kb.source_tree_name(DEB_VERSION)
    tree.mkdir(parents=True)
    (tree / "Makefile").write_text("all:\n")
    (tmp_path / "src" / kb.EXTRACTED).write_text(f"{DEB_VERSION}\n")
    assert kb.fetch_source(tmp_path, DEB_VERSION, tmp_path / "log", print) == tree


def test_run_logged_streams_output_and_reports_failure(tmp_path):
    log = tmp_path / "build.log"
    kb.run_logged(["sh", "-c", "echo compiled"], log=log)
    assert "compiled" in log.read_text()
    with pytest.raises(kb.procs.StackError, match=r"exited 2.*went wrong"):
        kb.run_logged(["sh", "-c", "echo went wrong; exit 2"], log=log)


def test_elapsed():
    assert kb.elapsed(42.4) == "42 s"
    assert kb.elapsed(781) == "13 min 01 s"


def test_cli_build_k8s_on_a_built_cache_loads_no_stack(tmp_path):
    import subprocess
    import sys

    from kuryr.aio import cli
    assert cli.parser().parse_args(["build-k8s"]).command == "build-k8s"
    # `kuryr-aio build-k8s` on a built cache must not import the stack
    # (pyroute2, openstacksdk): that is what keeps the no-op well under 1 s.
    code = ("import sys; import kuryr.aio.cli; "
            "print('kuryr.aio.stack' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "False"

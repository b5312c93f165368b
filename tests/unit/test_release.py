"""The release artifacts: `python -m build` makes an sdist and a wheel that hold
what Kuryr needs at run time, and the wheel, installed into a fresh venv, runs.

The build runs without isolation (the project venv's setuptools and `build`,
both in the `test` extra): no download, ~2 s.  The fresh venv gets the wheel
with `--no-deps`; its dependencies are the project venv's, reached through a
.pth line (a plain path: the project venv's own .pth files, among them the
editable install's finder, are not run).  So the code that runs is the wheel's,
never the checkout's (checked: `kuryr.__file__` is inside the new venv), while
nothing is fetched from an index.

The systemd units are checked twice: their sections and keys by a parser (always),
and by `systemd-analyze verify` on the copies the wheel installed, with ExecStart
pointed at the new venv's `kuryr` (verify wants an executable there).
"""

from __future__ import annotations

import configparser
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import zipfile
from pathlib import Path

import pytest

import kuryr
from kuryr.cni import protocol

ROOT = Path(__file__).resolve().parents[2]
UNITS = ("kuryr.service", "kuryr-cni-daemon.service", "kuryr-k8s-controller.service")
SCRIPTS = ("kuryr", "kuryr-aio", "kuryr-bench", "kuryr-cni", "kuryr-cni-install")
SHARE = f"kuryr-{kuryr.__version__}.data/data/share/kuryr"
# The highest `systemd-analyze security` exposure each unit may reach (0 best, 10
# worst): a change that loosens a unit's sandbox shows up here.
EXPOSURE = {"kuryr.service": 3.5, "kuryr-cni-daemon.service": 3.5,
            "kuryr-k8s-controller.service": 1.5}

pytestmark = pytest.mark.release


def _run(argv, **kwargs):
    env = {k: v for k, v in os.environ.items()
           if k not in {"PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "KURYR_CONFIG_FILE"}}
    return subprocess.run(argv, check=False, capture_output=True, text=True, timeout=120,
                          env={**env, **kwargs.pop("env", {})}, **kwargs)


@pytest.fixture(scope="module")
def dist(tmp_path_factory):
    out = tmp_path_factory.mktemp("dist")
    # The default `python -m build`: the sdist first, then the wheel built FROM the
    # sdist, so a file the sdist lacks is missing from the wheel too.
    done = _run([sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out),
                 str(ROOT)], cwd=out)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    (sdist,) = out.glob("kuryr-*.tar.gz")
    (wheel,) = out.glob("kuryr-*-py3-none-any.whl")
    return sdist, wheel


@pytest.fixture(scope="module")
def venv(dist, tmp_path_factory):
    """A fresh venv with the wheel installed (and the project venv's packages
    beside it for the dependencies)."""
    _, wheel = dist
    path = tmp_path_factory.mktemp("venv") / "venv"
    done = _run([sys.executable, "-m", "venv", "--without-pip", str(path)])
    assert done.returncode == 0, done.stderr
    python = path / "bin" / "python"
    code = "import sysconfig; print(sysconfig.get_paths()['purelib'])"
    purelib = Path(_run([str(python), "-c", code]).stdout.strip())
    done = _run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q",
                 "--no-deps", "--no-index", "--no-compile", str(wheel)])
    assert done.returncode == 0, done.stdout + done.stderr
    (purelib / "zz-kuryr-test-deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return path


def test_the_version_is_written_once():
    # pyproject.toml takes it from kuryr/__init__.py: no second copy to forget.
    text = (ROOT / "pyproject.toml").read_text()
    assert 'dynamic = ["version"]' in text
    assert 'version = { attr = "kuryr.__version__" }' in text
    assert not re.search(r'^version\s*=\s*"', text, re.MULTILINE)


def test_sdist_has_the_sources_and_the_operator_files(dist):
    sdist, _ = dist
    base = sdist.name.removesuffix(".tar.gz")
    with tarfile.open(sdist) as tar:
        names = set(tar.getnames())
    for name in ("pyproject.toml", "README.md", "etc/kuryr.conf.sample", "kuryr/cli.py",
                 "kuryr/k8s/manifests/kuryr.yaml", *(f"etc/systemd/{u}" for u in UNITS)):
        assert f"{base}/{name}" in names


def test_wheel_has_what_runs_and_what_the_operator_installs(dist):
    _, wheel = dist
    assert wheel.name == f"kuryr-{kuryr.__version__}-py3-none-any.whl"
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        entry_points = zf.read(f"kuryr-{kuryr.__version__}.dist-info/entry_points.txt")
        sample = zf.read(f"{SHARE}/kuryr.conf.sample").decode()
    assert sample == (ROOT / "etc" / "kuryr.conf.sample").read_text()
    for unit in UNITS:
        assert f"{SHARE}/systemd/{unit}" in names
    for manifest in ("kuryr.yaml", "rbac.yaml"):
        assert f"kuryr/k8s/manifests/{manifest}" in names
    assert any(n.startswith("kuryr/aio/templates/") for n in names)
    assert "kuryr/cni/main.py" in names
    assert not any(n.startswith(("tests/", "etc/")) for n in names)
    scripts = configparser.ConfigParser()
    scripts.read_string(entry_points.decode())
    assert set(scripts["console_scripts"]) == set(SCRIPTS)
    assert scripts["console_scripts"]["kuryr"] == "kuryr.cli:main"
    assert scripts["console_scripts"]["kuryr-cni"] == "kuryr.cni.main:main"
    assert scripts["oslo.config.opts"]["kuryr"] == "kuryr.config:list_opts"


def test_the_installed_wheel_runs_its_own_code(venv, tmp_path):
    for script in SCRIPTS:
        assert (venv / "bin" / script).exists()
    where = _run([str(venv / "bin" / "python"), "-c", "import kuryr; print(kuryr.__file__)"],
                 cwd=tmp_path)
    assert where.returncode == 0, where.stderr
    assert Path(where.stdout.strip()).is_relative_to(venv), where.stdout
    # The operator files land under <prefix>/share/kuryr (docs/install.md).
    assert (venv / "share" / "kuryr" / "kuryr.conf.sample").is_file()
    for unit in UNITS:
        assert (venv / "share" / "kuryr" / "systemd" / unit).is_file()


def test_kuryr_version(venv, tmp_path):
    done = _run([str(venv / "bin" / "kuryr"), "--version"], cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"kuryr {kuryr.__version__}"


def test_kuryr_serve_help(venv, tmp_path):
    done = _run([str(venv / "bin" / "kuryr"), "serve", "--help"], cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: kuryr ")
    for word in ("serve", "cni-daemon", "k8s-controller", "--version", "--config-file"):
        assert word in done.stdout


def test_kuryr_cni_version(venv, tmp_path):
    done = _run([str(venv / "bin" / "kuryr-cni")], cwd=tmp_path,
                input='{"cniVersion": "1.0.0"}', env={"CNI_COMMAND": "VERSION"})
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {
        "cniVersion": "1.0.0", "supportedVersions": list(protocol.SUPPORTED_VERSIONS)}


# -- systemd units ------------------------------------------------------------------------------

def _unit(name):
    """A unit file's keys, each with the list of its values (keys repeat)."""
    sections: dict[str, dict[str, list[str]]] = {}
    section = None
    for raw in (ROOT / "etc" / "systemd" / name).read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = sections.setdefault(line.strip("[]"), {})
            continue
        key, sep, value = line.partition("=")
        assert sep, f"{name}: {raw!r}"
        assert section is not None, f"{name}: {raw!r} before any section"
        section.setdefault(key, []).append(value)
    return sections


@pytest.mark.parametrize("name", UNITS)
def test_unit_shape(name):
    unit = _unit(name)
    assert set(unit) == {"Unit", "Service", "Install"}
    service = unit["Service"]
    # Kuryr does not call sd_notify: "notify" would never come up.
    assert service["Type"] == ["simple"]
    assert service["Restart"] == ["on-failure"]
    (start,) = service["ExecStart"]
    assert start.startswith("/usr/local/bin/kuryr ")
    assert "/etc/kuryr/kuryr.conf" in start or "%d/kuryr.conf" in start
    for key in ("NoNewPrivileges", "ProtectHome", "PrivateTmp", "LockPersonality",
                "RestrictRealtime", "RestrictSUIDSGID"):
        assert service[key] == ["yes"], key
    assert service["ProtectSystem"] == ["strict"]
    assert "CapabilityBoundingSet" in service
    assert unit["Install"]["WantedBy"] == ["multi-user.target"]


def test_the_plugin_is_up_before_dockerd_and_after_ovs():
    unit = _unit("kuryr.service")
    assert "kuryr serve --config-file /etc/kuryr/kuryr.conf" in unit["Service"]["ExecStart"][0]
    assert "docker.service" in unit["Unit"]["Before"][0].split()
    after = unit["Unit"]["After"][0].split()
    for dependency in ("openvswitch-switch.service", "ovn-controller.service",
                       "network-online.target"):
        assert dependency in after
        assert dependency in unit["Unit"]["Wants"][0].split()
    caps = set(unit["Service"]["CapabilityBoundingSet"][0].split())
    assert caps == {"CAP_NET_ADMIN", "CAP_SYS_ADMIN", "CAP_NET_BIND_SERVICE", "CAP_CHOWN"}
    assert unit["Service"]["RestrictAddressFamilies"] == [
        "AF_UNIX AF_INET AF_INET6 AF_NETLINK"]


def test_the_controller_has_no_privileges():
    service = _unit("kuryr-k8s-controller.service")["Service"]
    assert service["DynamicUser"] == ["yes"]
    assert service["CapabilityBoundingSet"] == [""]
    assert "AF_NETLINK" not in service["RestrictAddressFamilies"][0]
    assert service["ProtectKernelTunables"] == ["yes"]


def _installed_units(venv, where):
    where.mkdir()
    for name in UNITS:
        text = (venv / "share" / "kuryr" / "systemd" / name).read_text()
        # verify checks that ExecStart's program is there and executable.
        (where / name).write_text(text.replace("/usr/local/bin/kuryr", str(venv / "bin/kuryr")))
    return [str(where / name) for name in UNITS]


@pytest.fixture
def systemd_analyze():
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.skip("systemd-analyze is not installed (Debian: apt-get install systemd)")
    return tool


def test_units_pass_systemd_analyze_verify(venv, tmp_path, systemd_analyze):
    units = _installed_units(venv, tmp_path / "units")
    done = _run([systemd_analyze, "verify", "--man=no", *units], cwd=tmp_path)
    # verify exits 0 on an unknown key or a bad value: it only warns.  Any
    # message is a failure here.
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""


def test_units_stay_sandboxed(venv, tmp_path, systemd_analyze):
    for path in _installed_units(venv, tmp_path / "units"):
        done = _run([systemd_analyze, "security", "--offline=yes", "--no-pager", path],
                    cwd=tmp_path)
        found = re.search(r"Overall exposure level for (\S+): ([\d.]+)", done.stdout)
        assert found, done.stdout[-2000:] + done.stderr
        assert float(found.group(2)) <= EXPOSURE[found.group(1)], done.stdout

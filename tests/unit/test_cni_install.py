"""kuryr-cni-install: the self-contained plugin and its conflist."""

import json
import subprocess
import sys
from pathlib import Path

from kuryr.cni import install


def test_installed_plugin_runs_on_the_standard_library_alone(tmp_path):
    written = install.install(tmp_path / "bin", tmp_path / "net.d", "/run/kuryr/cni.sock",
                              interpreter=sys.executable)
    plugin = tmp_path / "bin" / "kuryr-cni"
    assert written == [plugin, tmp_path / "net.d" / "10-kuryr.conflist"]
    # -I -S: no site-packages, no PYTHONPATH, no current directory: only the
    # standard library and the zip application itself (as on a bare node).
    proc = subprocess.run([sys.executable, "-I", "-S", str(plugin)],
                          env={"CNI_COMMAND": "VERSION"}, input=b'{"cniVersion": "1.0.0"}',
                          capture_output=True, timeout=30, check=False)
    assert proc.returncode == 0, proc.stderr
    answer = json.loads(proc.stdout)
    assert answer["cniVersion"] == "1.0.0"
    assert "0.4.0" in answer["supportedVersions"]
    assert plugin.read_bytes().startswith(f"#!{sys.executable} -IS\n".encode())
    # Run as the runtime runs it: through its #! line.
    direct = subprocess.run([str(plugin)], env={"CNI_COMMAND": "VERSION"},
                            capture_output=True, timeout=30, check=False)
    assert direct.returncode == 0, direct.stderr
    assert json.loads(direct.stdout)["cniVersion"] == "1.1.0"


def test_the_plugin_imports_its_bytecode_and_another_pythons_falls_back_to_source(tmp_path):
    import importlib.util
    import zipfile

    install.install(tmp_path / "bin", tmp_path / "net.d", "/run/kuryr/cni.sock",
                    interpreter=sys.executable)
    plugin = tmp_path / "bin" / "kuryr-cni"
    def imported_from(zip_app: Path) -> str:
        probe = (f"import sys; sys.path.insert(0, {str(zip_app)!r}); "
                 "import kuryr.cni.protocol as m; print(m.__file__)")
        return subprocess.run([sys.executable, "-IS", "-c", probe], capture_output=True,
                              text=True, timeout=30, check=True).stdout.strip()

    assert imported_from(plugin).endswith("kuryr/cni/protocol.pyc")  # compiled at install
    # Bytecode of another Python version (another magic number): the source is used.
    foreign = tmp_path / "foreign"
    with zipfile.ZipFile(plugin) as src, zipfile.ZipFile(foreign, "w") as dst:
        for item in src.infolist():
            data = src.read(item)
            if item.filename.endswith(".pyc"):
                data = bytes([data[0] ^ 0xFF]) + data[1:]
                assert data[:4] != importlib.util.MAGIC_NUMBER
            dst.writestr(item, data)
    assert imported_from(foreign).endswith("kuryr/cni/protocol.py")
    proc = subprocess.run([sys.executable, "-IS", str(foreign)], env={"CNI_COMMAND": "VERSION"},
                          capture_output=True, timeout=30, check=False)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["cniVersion"] == "1.1.0"


def test_add_without_a_daemon_asks_to_try_again(tmp_path):
    install.install(tmp_path / "bin", tmp_path / "net.d", str(tmp_path / "none.sock"),
                    interpreter=sys.executable)
    conf = (tmp_path / "net.d" / "10-kuryr.conflist").read_text()
    network = {**json.loads(conf)["plugins"][0], "cniVersion": "0.4.0", "name": "kuryr"}
    env = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c1", "CNI_NETNS": "/var/run/netns/x",
           "CNI_IFNAME": "eth0", "CNI_PATH": str(tmp_path / "bin")}
    proc = subprocess.run([sys.executable, "-I", "-S", str(tmp_path / "bin" / "kuryr-cni")],
                          env=env, input=json.dumps(network).encode(),
                          capture_output=True, timeout=30, check=False)
    assert proc.returncode == 1
    assert json.loads(proc.stdout)["code"] == 11


def test_install_is_idempotent_and_atomic(tmp_path):
    args = (tmp_path / "bin", tmp_path / "net.d", "/run/kuryr/cni.sock")
    install.install(*args)
    assert install.install(*args) == []  # unchanged: nothing rewritten
    assert not list((tmp_path / "bin").glob(".*.tmp"))
    conflist = json.loads((tmp_path / "net.d" / "10-kuryr.conflist").read_text())
    assert conflist == {"cniVersion": "0.4.0", "name": "kuryr", "plugins": [
        {"type": "kuryr-cni", "daemon_socket": "/run/kuryr/cni.sock"}]}
    assert install.plugin_bytes() == install.plugin_bytes(), "the same bytes every time"


def test_relative_socket_is_refused(tmp_path, capsys):
    import pytest
    with pytest.raises(SystemExit):
        install.main(["--bin-dir", str(tmp_path), "--conf-dir", str(tmp_path),
                      "--socket", "cni.sock"])
    assert "not an absolute path" in capsys.readouterr().err

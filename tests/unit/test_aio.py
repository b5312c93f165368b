import io
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from kuryr.aio import docker, procs, stack
from kuryr.aio.layout import Layout


def test_env_exports_point_clients_at_the_stack(tmp_path):
    layout = Layout(base=tmp_path, run=tmp_path / "run", host="h1")
    text = stack.env_exports(layout)
    assert f"export DOCKER_HOST=unix://{tmp_path}/run/docker.sock\n" in text
    assert "export OS_AUTH_TYPE=none\n" in text
    assert "export OS_ENDPOINT=http://127.0.0.1:9696\n" in text


def test_stop_kills_only_the_expected_process(tmp_path):
    pidfile = tmp_path / "sleeper.pid"
    pid = procs.spawn([sys.executable, "-c", "import time; time.sleep(60)"],
                      pidfile=pidfile, log=tmp_path / "sleeper.log")
    assert procs.wait_for(lambda: procs.pid_alive(pidfile, "time.sleep"), 5)
    # A PID file naming a process that runs something else is not ours to kill.
    assert procs.stop(pidfile, "ovs-vswitchd") is False
    pidfile.write_text(f"{pid}\n")
    assert procs.alive(pid)
    assert procs.stop(pidfile, "time.sleep", timeout=5) is True
    assert not procs.alive(pid)
    assert not pidfile.exists()


def test_run_reports_the_failing_command(tmp_path):
    with pytest.raises(procs.StackError, match="exited 3"):
        procs.run([sys.executable, "-c", "import sys; print('boom'); sys.exit(3)"])
    with pytest.raises(procs.StackError, match="not installed"):
        procs.run(["/nonexistent/tool"])


@pytest.mark.skipif(not Path("/bin/busybox").exists(), reason="busybox-static not installed")
def test_busybox_rootfs_has_a_shell_and_network_tools():
    with tarfile.open(fileobj=io.BytesIO(docker.busybox_rootfs())) as tar:
        names = {m.name: m for m in tar.getmembers()}
    assert names["bin/busybox"].isfile()
    for applet in ("bin/sh", "bin/ping", "sbin/ip"):
        assert names[applet].issym()
        assert names[applet].linkname == "/bin/busybox"


def test_aio_refuses_to_run_without_root_or_prints_env():
    out = subprocess.run([sys.executable, "-m", "kuryr.aio.cli", "env"],
                         capture_output=True, text=True, check=True).stdout
    assert "DOCKER_HOST=" in out

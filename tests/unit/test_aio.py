import io
import stat
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from kuryr.aio import debian_services, docker, keystone, links, mariadb, passwords, procs, stack
from kuryr.aio.layout import Layout
from kuryr.aio.neutron_server import NeutronServer


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


# -- item 11: database passwords, file and directory modes -------------------
def _tmp_layout(tmp_path):
    return Layout(base=tmp_path / "base", run=tmp_path / "run", host="h1")


def _mode(path):
    return stat.S_IMODE(path.stat().st_mode)


def test_db_password_is_made_once_and_kept_root_only(tmp_path):
    layout = _tmp_layout(tmp_path)
    first = passwords.db_password(layout, "neutron")
    assert passwords.PASSWORD_PATTERN.fullmatch(first)
    assert passwords.db_password(layout, "neutron") == first  # kept across `up` runs
    assert passwords.db_password(layout, "keystone") != first  # one per database user
    path = layout.db_password_file("neutron")
    assert path.parent == layout.secrets_dir
    assert _mode(path) == 0o600
    assert _mode(layout.secrets_dir) == 0o700
    # No temporary file is left beside it.
    assert sorted(p.name for p in layout.secrets_dir.iterdir()) == [
        "mariadb-keystone.password", "mariadb-neutron.password"]


def test_db_password_file_gets_its_mode_back_and_must_hold_a_password(tmp_path):
    layout = _tmp_layout(tmp_path)
    password = passwords.db_password(layout, "neutron")
    path = layout.db_password_file("neutron")
    path.chmod(0o644)
    assert passwords.db_password(layout, "neutron") == password
    assert _mode(path) == 0o600
    path.write_text("it's'; DROP USER root\n")
    with pytest.raises(procs.StackError, match="does not hold a kuryr-aio password"):
        passwords.db_password(layout, "neutron")


def test_native_password_hash_is_mariadbs():
    # SELECT PASSWORD('password') in MariaDB 10.11
    assert passwords.native_password_hash("password") == \
        "*2470C0C06DEE42FD1618BB99005ADCA2EC9D1E19"


def test_user_statements_also_give_an_old_user_the_new_password():
    sql = mariadb.user_statements("neutron", "neutron", "s3cretXXXXXXXXXXXXXXXX")
    assert "CREATE DATABASE IF NOT EXISTS neutron" in sql
    assert "CREATE USER IF NOT EXISTS 'neutron'@'localhost';" in sql
    # A user made with kuryr-aio's old fixed password takes this install's.
    assert "ALTER USER 'neutron'@'localhost' IDENTIFIED BY 's3cretXXXXXXXXXXXXXXXX';" in sql
    assert "GRANT ALL PRIVILEGES ON neutron.* TO 'neutron'@'localhost';" in sql


def test_make_dirs_keeps_others_out_of_logs_and_mariadb_socket(tmp_path):
    layout = _tmp_layout(tmp_path)
    # Directories made by an older kuryr-aio (0755) are tightened too.
    for old in (layout.logs, layout.run):
        old.mkdir(parents=True)
        old.chmod(0o755)
    layout.make_dirs()
    assert _mode(layout.logs) == 0o700
    assert _mode(layout.run) == 0o711  # dockerd's socket (group docker) is in it
    assert _mode(layout.mysql_run) == 0o700
    assert layout.mysql_sock.parent == layout.mysql_run


def test_neutron_and_keystone_configs_hold_the_password_root_only(tmp_path):
    layout = _tmp_layout(tmp_path)
    paste = layout.neutron_venv / "etc" / "neutron" / "api-paste.ini"
    paste.parent.mkdir(parents=True)
    paste.write_text("[composite:neutron]\n")
    server = NeutronServer(layout)
    server.write_config()
    conf = layout.neutron_dir / "neutron.conf"
    assert _mode(conf) == 0o600
    password = passwords.db_password(layout, "neutron")
    assert (f"mysql+pymysql://neutron:{password}@localhost/neutron"
            f"?unix_socket={layout.mysql_sock}&charset=utf8") in conf.read_text()
    component = keystone.Keystone(layout)
    component.write_config()
    assert _mode(component.config_file) == 0o600
    assert passwords.db_password(layout, "keystone") in component.config_file.read_text()
    assert not component.config_outdated()
    # A new password (the file removed) makes the running Keystone outdated.
    layout.db_password_file("keystone").unlink()
    assert component.config_outdated()


# -- item 12: `down` deletes only the interfaces `up` made ------------------
def test_down_deletes_only_the_links_up_recorded(tmp_path):
    layout = _tmp_layout(tmp_path)
    host = {"docker0", "br-int"}  # on the host before `up`: another Docker and OVS
    before = links.existing(["docker0", "br-int", "br-ex"], exists=host.__contains__)
    host |= {"br-ex", "ovs-netdev"}  # what the stack's daemons then made
    links.record_new(layout, ["docker0", "br-int", "br-ex", "ovs-netdev"], before,
                     exists=host.__contains__)
    assert links.created(layout) == ["br-ex", "ovs-netdev"]
    links.record(layout, ["aio-out-br"])
    deleted_calls = []

    def delete(name):
        deleted_calls.append(name)
        return name in host

    gone = links.delete_created(layout, ["ovs-netdev", "br-int", "br-ex", "genev_sys_6081"],
                                delete=delete)
    assert gone == ["ovs-netdev", "br-ex"]
    assert deleted_calls == ["ovs-netdev", "br-ex"]  # never br-int, never asked about
    assert links.delete_created(layout, ["docker0"], delete=delete) == []
    assert "docker0" not in deleted_calls
    # What is left in the record is what was not asked for yet.
    assert links.created(layout) == ["aio-out-br"]


def test_no_record_means_nothing_is_ours(tmp_path):
    layout = _tmp_layout(tmp_path)
    assert links.created(layout) == []
    assert links.delete_created(layout, ["docker0", "br-int"],
                                delete=lambda name: pytest.fail(f"deleted {name}")) == []


def test_older_stack_links_are_adopted_only_once(tmp_path):
    layout = _tmp_layout(tmp_path)
    links.record(layout, ["br-int"])  # a record exists: this kuryr-aio made the stack
    assert stack.adopt_links_of_older_stack(layout) == []
    assert links.created(layout) == ["br-int"]


# -- item 12: Debian's own services beside the stack's -----------------------
SHOW = """\
Id=docker.socket
ActiveState=active
UnitFileState=enabled

Id=docker.service
ActiveState=inactive
UnitFileState=enabled

Id=ovs-vswitchd.service
ActiveState=active
UnitFileState=static

Id=ovn-central.service
ActiveState=inactive
UnitFileState=masked

Id=mariadb.service
ActiveState=inactive
UnitFileState=disabled

Id=ovn-host.service
ActiveState=inactive
UnitFileState=
"""


def test_running_or_enabled_debian_units_are_stopped():
    states = debian_services.parse_show(SHOW)
    assert states["ovn-host.service"]["UnitFileState"] == ""  # not installed
    assert debian_services.units_to_stop(states) == [
        "docker.socket", "docker.service", "ovs-vswitchd.service"]


def test_without_systemd_as_pid_1_nothing_is_asked(tmp_path):
    comm = tmp_path / "comm"
    comm.write_text("process_api\n")
    said = []
    assert debian_services.stop_debian_services(said.append, comm=comm) == []
    assert said == []
    comm.write_text("systemd\n")
    assert debian_services.systemd_is_init(comm)
    assert not debian_services.systemd_is_init(tmp_path / "missing")


def test_the_units_are_debians_of_the_packages_aio_installs():
    assert {"docker.service", "docker.socket", "openvswitch-switch.service",
            "ovn-central.service", "ovn-host.service", "mariadb.service"} <= \
        set(debian_services.DEBIAN_UNITS)
    # The stack's dockerd uses a running containerd; others may need it too.
    assert "containerd.service" not in debian_services.DEBIAN_UNITS

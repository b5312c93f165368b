"""The managed Docker plugin's config.json and settings, the Kuryr tree's keys,
and the mount table parser the stack uses to share dockerd's netns directory."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest

from kuryr import config
from kuryr.aio import managed_plugin, namespaces, rootfs

TREE = rootfs.Tree(path=Path("/cache/rootfs/kuryr-abc/rootfs"), build_id="0123456789abcdef",
                   version="1.2.3")


def test_config_json_declares_both_drivers_on_the_host_network():
    cfg = managed_plugin.config_json(TREE)
    assert cfg["interface"] == {"types": ["docker.networkdriver/1.0", "docker.ipamdriver/1.0"],
                                "socket": "kuryr.sock"}
    assert cfg["network"] == {"type": "host"}
    assert cfg["entrypoint"] == ["/opt/kuryr/bin/kuryr", "serve", "--config-file",
                                 "/etc/kuryr/kuryr.conf"]
    assert "build 0123456789abcdef" in cfg["description"]
    assert "1.2.3" in cfg["description"]


def test_config_json_asks_for_only_three_capabilities():
    caps = managed_plugin.config_json(TREE)["linux"]["capabilities"]
    assert caps == ["CAP_NET_ADMIN", "CAP_SYS_ADMIN", "CAP_NET_BIND_SERVICE"]


def test_every_mount_is_a_settable_bind_and_the_netns_dir_follows_the_host():
    mounts = {m["name"]: m for m in managed_plugin.config_json(TREE)["mounts"]
              if m["settable"]}
    assert set(mounts) == {"config", "openvswitch", "docker-netns", "docker-socket", "logs"}
    for mount in mounts.values():
        assert mount["type"] == "bind"
        assert mount["settable"] == ["source"]
        assert not mount["destination"].startswith("/proc")  # runc refuses those
    assert "rslave" in mounts["docker-netns"]["options"]
    assert "ro" in mounts["config"]["options"]


def test_settable_environment_names_are_real_kuryr_options():
    """OS_<GROUP>__<OPTION> only works for options Kuryr has (or keystoneauth's)."""
    conf = config.load([], config_files=[])
    auth_options = {"auth_type", "auth_url", "username", "password", "project_name",
                    "user_domain_name", "project_domain_name", "endpoint"}
    for name, _ in managed_plugin.SETTABLE_ENV:
        group, option = name.removeprefix("OS_").lower().split("__")
        if option in auth_options:
            continue  # registered with the auth plugin at load time
        group_conf = conf if group == "default" else conf[group]
        assert option in group_conf, name


def test_config_json_sets_no_settable_environment_value():
    """An env entry with a value would override kuryr.conf with it, even empty."""
    for entry in managed_plugin.config_json(TREE)["env"]:
        if entry["name"] == "KURYR_PROC_SYS_NET":
            continue
        assert "value" not in entry
        assert entry["settable"] == ["value"]


def test_settings_args_are_docker_plugin_set_arguments():
    args = managed_plugin.settings_args({"config": "/srv/kuryr"},
                                        {"OS_NEUTRON__PASSWORD": "s3cret"})
    assert args == ["config.source=/srv/kuryr", "OS_NEUTRON__PASSWORD=s3cret"]


def test_an_unknown_mount_or_environment_name_is_refused_with_the_known_ones():
    with pytest.raises(ValueError, match="OS_X__Y, bogus") as info:
        managed_plugin.settings_args({"bogus": "/x"}, {"OS_X__Y": "1"})
    assert "openvswitch" in str(info.value)
    assert "OS_NEUTRON__AUTH_URL" in str(info.value)


def test_wanted_settings_fill_in_the_default_sources():
    wanted = managed_plugin.wanted_settings({"config": "/srv/kuryr"}, {})
    assert wanted["mounts"]["config"] == "/srv/kuryr"
    assert wanted["mounts"]["openvswitch"] == "/run/openvswitch"


def test_missing_sources_are_named_but_the_log_directory_is_made_instead(tmp_path):
    mounts = managed_plugin.wanted_settings(
        {"config": str(tmp_path), "openvswitch": str(tmp_path / "no-ovs"),
         "logs": str(tmp_path / "no-logs")}, {})["mounts"]
    missing = managed_plugin.missing_sources(mounts)
    assert f"openvswitch={tmp_path / 'no-ovs'}" in missing
    assert not any(item.startswith(("config=", "logs=")) for item in missing)


def _inspected(mounts: dict[str, str], env: list[str]) -> dict:
    return {"Settings": {"Mounts": [{"Name": n, "Source": s} for n, s in mounts.items()],
                         "Env": env}}


def test_same_settings_need_no_change_and_an_earlier_env_value_is_kept():
    wanted = managed_plugin.wanted_settings({}, {"OS_DEFAULT__DEBUG": "true"})
    installed = managed_plugin.installed_settings(_inspected(
        {**wanted["mounts"], "proc-sys-net": "/proc/sys/net"},
        ["OS_DEFAULT__DEBUG=true", "OS_NEUTRON__PASSWORD=x", "KURYR_PROC_SYS_NET=/host"]))
    assert not managed_plugin.needs_settings(installed, wanted)


def test_another_source_or_value_needs_a_change():
    wanted = managed_plugin.wanted_settings({"config": "/srv/kuryr"}, {})
    defaults = managed_plugin.wanted_settings({}, {})["mounts"]
    assert managed_plugin.needs_settings(
        managed_plugin.installed_settings(_inspected(defaults, [])), wanted)
    wanted_env = managed_plugin.wanted_settings({}, {"OS_DEFAULT__DEBUG": "true"})
    assert managed_plugin.needs_settings(
        managed_plugin.installed_settings(_inspected(defaults, ["OS_DEFAULT__DEBUG=false"])),
        wanted_env)


def test_base_key_follows_suite_mirror_and_packages_not_their_order():
    key = rootfs.base_key("bookworm", "http://m", ("a", "b"))
    assert key == rootfs.base_key("bookworm", "http://m", ("b", "a"))
    assert key != rootfs.base_key("trixie", "http://m", ("a", "b"))
    assert key != rootfs.base_key("bookworm", "http://other", ("a", "b"))
    assert key != rootfs.base_key("bookworm", "http://m", ("a", "b", "c"))


def _wheel(path: Path, members: dict[str, bytes], date: tuple) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(zipfile.ZipInfo(name, date_time=date), data)
    return path


def test_wheel_digest_ignores_zip_dates_but_not_contents(tmp_path):
    members = {"kuryr/__init__.py": b"x = 1\n", "kuryr-1.dist-info/RECORD": b"r"}
    a = _wheel(tmp_path / "a.whl", members, (2020, 1, 1, 0, 0, 0))
    b = _wheel(tmp_path / "b.whl", members, (2026, 12, 1, 0, 0, 0))
    c = _wheel(tmp_path / "c.whl", {**members, "kuryr/__init__.py": b"x = 2\n"},
               (2020, 1, 1, 0, 0, 0))
    assert rootfs.wheel_digest(a) == rootfs.wheel_digest(b)
    assert rootfs.wheel_digest(a) != rootfs.wheel_digest(c)


def test_a_tree_without_its_completion_mark_is_not_used(tmp_path):
    assert not rootfs.is_complete(tmp_path)
    (tmp_path / rootfs.COMPLETE).write_text("done\n")
    assert rootfs.is_complete(tmp_path)


def test_the_host_network_sysctls_are_mounted_beside_proc_and_named_for_kuryr():
    cfg = managed_plugin.config_json(TREE)
    (sysctls,) = [m for m in cfg["mounts"] if m["source"] == "/proc/sys/net"]
    assert sysctls["destination"] == "/host/proc/sys/net"
    assert "rw" in sysctls["options"]
    assert sysctls["settable"] == []
    (env,) = [e for e in cfg["env"] if e["name"] == "KURYR_PROC_SYS_NET"]
    assert env["value"] == sysctls["destination"]


MOUNTINFO = """\
22 1 8:1 / / rw,relatime - ext4 /dev/sda1 rw
60 22 0:5 / /run/netns rw shared:12 - tmpfs tmpfs rw
61 22 0:6 / /var/lib/x\\040y rw master:3 - tmpfs tmpfs rw
62 22 0:7 / /short rw
"""


def test_mount_points_and_their_propagation():
    points = namespaces.mount_points(MOUNTINFO)
    assert points == {"/": set(), "/run/netns": {"shared"}, "/var/lib/x y": {"master"}}

"""The managed Docker plugin's config.json and settings, the Kuryr tree's keys,
and the mount table parser the stack uses to share dockerd's netns directory."""

from __future__ import annotations

import contextlib
import os
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


class RecordingInstaller(managed_plugin.Installer):
    """The push rules, with dockerd's plugin list as a dict (the real push is
    tests/integration/test_managed_plugin.py's)."""

    def __init__(self, name: str, existing: dict[str, str], fail_push: bool = False) -> None:
        super().__init__("unix:///nowhere", name)
        self.plugins = dict(existing)  # name -> description
        self.calls: list[tuple[str, ...]] = []
        self.fail_push = fail_push

    def cli(self, *args: str, timeout: float = 120, check: bool = True) -> str:
        self.calls.append(args[:2])
        verb = args[1]
        if verb == "inspect":
            found = self.plugins.get(self.name)
            return "[]" if found is None else \
                f'[{{"Config": {{"Description": "{found}"}}, "Enabled": false}}]'
        if verb == "push" and self.fail_push:
            raise managed_plugin.procs.StackError("push refused")
        if verb == "rm":  # dockerd's answer names what it removed
            return self.name + "\n" if self.plugins.pop(self.name, None) else ""
        return ""

    def _create(self, tree: rootfs.Tree, context: Path | None = None) -> None:
        self.calls.append(("plugin", "create"))
        self.plugins[self.name] = f"Kuryr (build {tree.build_id})"


REF = "127.0.0.1:5000/kuryr/kuryr:1.2.3"


@pytest.fixture
def no_tree(monkeypatch):
    """The push rules' tests make no tree: their context is a name."""
    monkeypatch.setattr(managed_plugin, "_push_context",
                        lambda tree, reference: contextlib.nullcontext(Path("/ctx")))


def test_the_push_context_links_the_tree_and_adds_a_marker_without_touching_it(tmp_path):
    home = tmp_path / "kuryr-0123456789abcdef"
    (home / "rootfs" / "opt" / "kuryr").mkdir(parents=True)
    python = home / "rootfs" / "opt" / "kuryr" / "python"
    python.write_text("the tree's")
    # A marker left in the tree (as a link would show it) is replaced, not written through.
    (home / "rootfs" / managed_plugin.PUSHED_AS.lstrip("/")).write_text("tree's own")
    tree = rootfs.Tree(home / "rootfs", "0123456789abcdef", "1.2.3")
    with managed_plugin._push_context(tree, REF) as context:
        linked = context / "rootfs" / "opt" / "kuryr" / "python"
        assert linked.stat().st_ino == python.stat().st_ino  # linked, not copied
        marker = context / "rootfs" / managed_plugin.PUSHED_AS.lstrip("/")
        assert marker.read_text() == f"{REF}\nbuild 0123456789abcdef\n"
    assert (home / "rootfs" / managed_plugin.PUSHED_AS.lstrip("/")).read_text() == "tree's own"
    assert not context.exists()
    assert [p.name for p in tmp_path.iterdir()] == [home.name]


def test_push_makes_the_plugin_pushes_it_and_removes_what_it_made(no_tree):
    installer = RecordingInstaller(REF, {})
    done = installer.push(TREE)
    assert [c[1] for c in installer.calls] == ["inspect", "create", "push", "rm"]
    assert installer.plugins == {}
    assert done == [f"created {REF} (Kuryr 1.2.3, build {TREE.build_id})", f"pushed {REF}",
                    f"removed the local {REF}"]


def test_push_of_a_plugin_that_was_there_keeps_it(no_tree):
    installer = RecordingInstaller(REF, {REF: f"Kuryr (build {TREE.build_id})"})
    assert installer.push(TREE) == [f"pushed {REF}"]
    assert REF in installer.plugins
    assert ("plugin", "rm") not in installer.calls


def test_push_refuses_a_name_held_by_another_build_and_touches_nothing(no_tree):
    installer = RecordingInstaller(REF, {REF: "Kuryr (build ffffffffffffffff)"})
    with pytest.raises(managed_plugin.procs.StackError, match="another build"):
        installer.push(TREE)
    assert [c[1] for c in installer.calls] == ["inspect"]


def test_a_failed_push_still_removes_the_plugin_it_made(no_tree):
    installer = RecordingInstaller(REF, {}, fail_push=True)
    with pytest.raises(managed_plugin.procs.StackError, match="push refused"):
        installer.push(TREE)
    assert installer.plugins == {}


@pytest.mark.parametrize("extra", [["--remove"], ["--mount", "config=/x"],
                                   ["--env", "OS_DEFAULT__DEBUG=1"], ["--name", "a/b:c"]])
def test_push_takes_no_host_settings(extra, capsys):
    with pytest.raises(SystemExit) as exc:
        managed_plugin.main(["--push", REF, *extra])
    assert exc.value.code == 2
    assert "settings are each host's" in capsys.readouterr().err


@pytest.fixture
def base_cache(tmp_path, monkeypatch):
    """A cache holding a complete Debian base; debootstrap replaced by a recorder."""
    base = rootfs.cache_dir(tmp_path) / f"debian-{rootfs.SUITE}-{rootfs.base_key()}"
    base.mkdir(parents=True)
    (base / rootfs.COMPLETE).write_text("debootstrap ...\n")
    made: list[Path] = []

    def debootstrap(path: Path, *, log: Path) -> Path:
        made.append(path)
        if getattr(debootstrap, "fails", False):
            raise rootfs.procs.StackError("deb.debian.org: no route to host")
        return path

    monkeypatch.setattr(rootfs, "_debootstrap", debootstrap)
    return tmp_path, base, made, debootstrap


def _age(base: Path, days: float) -> None:
    mark = base / rootfs.COMPLETE
    when = mark.stat().st_mtime - days * 86400
    os.utime(mark, (when, when))


def test_a_young_debian_base_is_used_as_it_is(base_cache):
    cache, base, made, _ = base_cache
    _age(base, 13)
    assert rootfs.debian_base(cache, log=cache / "log", max_age_days=14) == base
    assert made == []


def test_an_old_debian_base_is_made_again(base_cache):
    cache, base, made, _ = base_cache
    _age(base, 15)
    assert rootfs.debian_base(cache, log=cache / "log", max_age_days=14) == base
    assert made == [base]


def test_an_old_base_that_cannot_be_made_again_is_kept_with_a_warning(base_cache, capsys):
    cache, base, made, debootstrap = base_cache
    _age(base, 30)
    debootstrap.fails = True
    assert rootfs.debian_base(cache, log=cache / "log", max_age_days=14) == base
    assert made == [base]
    warning = capsys.readouterr().err
    assert "30 days old" in warning
    assert "no route to host" in warning


def test_a_missing_base_that_cannot_be_made_is_an_error(base_cache):
    cache, base, _, debootstrap = base_cache
    (base / rootfs.COMPLETE).unlink()
    debootstrap.fails = True
    with pytest.raises(rootfs.procs.StackError, match="no route"):
        rootfs.debian_base(cache, log=cache / "log")


def test_a_remade_base_gives_the_same_wheel_another_build_id(tmp_path):
    base = tmp_path / "debian-bookworm-abc"
    base.mkdir()
    (base / rootfs.COMPLETE).write_text("debootstrap bookworm ... 2026-11-01T00:00:00Z\n")
    first = rootfs.tree_build_id(base, "wheel")
    assert rootfs.tree_build_id(base, "wheel") == first
    assert rootfs.tree_build_id(base, "other wheel") != first
    (base / rootfs.COMPLETE).write_text("debootstrap bookworm ... 2026-11-15T00:00:00Z\n")
    assert rootfs.tree_build_id(base, "wheel") != first
    assert len(first) == 16

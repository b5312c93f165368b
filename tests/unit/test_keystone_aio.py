import sys

import pytest
import yaml
from keystoneauth1 import loading as ks_loading
from keystoneauth1.identity import generic

from kuryr import config
from kuryr.aio import cli, keystone, stack, venvs
from kuryr.aio.layout import KEYSTONE_VERSION, Layout
from kuryr.aio.neutron_server import NeutronServer
from kuryr.aio.plugin import KuryrPlugin

from .ini import parse_ini


def _layout(tmp_path):
    return Layout(base=tmp_path / "base", run=tmp_path / "run", host="h1")


_ini = parse_ini


def test_keystone_conf_points_at_the_stack(tmp_path):
    layout = _layout(tmp_path)
    conf = _ini(keystone.keystone_conf(layout))
    # The database user's password is this install's, made once and kept.
    password = layout.db_password_file("keystone").read_text().strip()
    assert conf["database"]["connection"] == (
        f"mysql+pymysql://keystone:{password}@localhost/keystone"
        f"?unix_socket={layout.mysql_sock}&charset=utf8")
    assert conf["token"]["provider"] == "fernet"
    # Keys are state of the stack: under its directory, wiped with it.
    assert conf["fernet_tokens"]["key_repository"] == str(layout.keystone_dir / "fernet-keys")
    assert conf["credential"]["key_repository"] == str(layout.keystone_dir / "credential-keys")


def test_venv_and_urls_follow_the_layout(tmp_path):
    layout = _layout(tmp_path)
    assert layout.keystone_venv == layout.base / "venvs" / f"keystone-{KEYSTONE_VERSION}"
    assert keystone.AUTH_URL == "http://127.0.0.1:5000/v3"
    assert f"keystone=={KEYSTONE_VERSION}" in keystone.KEYSTONE_PACKAGES


def test_write_config_puts_argv_aside_before_keystone_reads_it(tmp_path):
    layout = _layout(tmp_path)
    component = keystone.Keystone(layout)
    component.write_config()
    assert component.config_file.read_text() == keystone.keystone_conf(layout)
    wsgi = (layout.keystone_dir / f"{keystone.WSGI_MODULE}.py").read_text()
    assert wsgi.index('sys.argv = ["keystone"]') < wsgi.index("from keystone.wsgi.api import")


def test_problems_without_a_running_keystone(tmp_path):
    component = keystone.Keystone(_layout(tmp_path))
    assert component.problems() == ["keystone (gunicorn) is not running"]
    assert component.logs[0] == tmp_path / "base" / "logs" / "keystone.log"


def test_neutron_auth_settings_and_snippet_agree():
    settings = keystone.neutron_auth_settings()
    assert settings["DEFAULT"] == {"auth_strategy": "keystone"}
    authtoken = settings["keystone_authtoken"]
    assert authtoken["auth_url"] == keystone.AUTH_URL
    assert authtoken["username"] == keystone.NEUTRON_USER
    assert authtoken["password"] == keystone.NEUTRON_PASSWORD
    assert authtoken["project_name"] == keystone.SERVICE_PROJECT
    parsed = _ini(keystone.neutron_auth_snippet())
    assert {s: dict(parsed[s]) for s in parsed.sections()} == settings


def test_settings_are_fresh_copies():
    keystone.neutron_auth_settings()["DEFAULT"]["auth_strategy"] = "noauth"
    assert keystone.neutron_auth_settings()["DEFAULT"]["auth_strategy"] == "keystone"


def test_kuryr_section_loads_as_a_password_plugin(tmp_path):
    conf_file = tmp_path / "kuryr.conf"
    conf_file.write_text(keystone.kuryr_neutron_section({"vif_plugging_timeout": "30"}))
    conf = config.load([], config_files=[str(conf_file)])
    assert conf.neutron.auth_type == "password"
    assert conf.neutron.vif_plugging_timeout == 30
    assert conf.neutron.region_name == keystone.REGION
    auth = ks_loading.load_auth_from_conf_options(conf, config.NEUTRON_GROUP)
    assert isinstance(auth, generic.Password)
    assert auth.auth_url == keystone.AUTH_URL
    assert (auth._username, auth._password) == (keystone.KURYR_USER, keystone.KURYR_PASSWORD)
    assert (auth._user_domain_name, auth._project_domain_name) == ("Default", "Default")
    assert auth._project_name == keystone.KURYR_PROJECT


def test_kuryr_is_not_admin():
    assert set(keystone.KURYR_ROLES) == {"member", "service"}
    assert keystone.NEUTRON_ROLES == ("service",)


def test_policy_override_puts_service_before_the_parent_owner_check():
    rules = yaml.safe_load(keystone.neutron_policy_override())
    assert rules == keystone.neutron_policy_rules()
    check = rules["create_floatingip_port_forwarding"]
    # Neutron cannot evaluate ext_parent_owner for a service-role caller:
    # the service check must decide first, and the default's terms stay.
    assert check.index("rule:service_api") < check.index("rule:ext_parent_owner")
    assert "rule:admin_only" in check
    assert "role:member" in check
    assert "create_network:shared" not in rules


def test_policy_override_for_shared_networks():
    rules = yaml.safe_load(keystone.neutron_policy_override(shared_networks=True))
    assert rules["create_network:shared"] == "(rule:admin_only) or (rule:service_api)"
    assert "create_floatingip_port_forwarding" in rules


def test_ini_text_keeps_section_order():
    text = keystone.ini_text({"b": {"x": "1"}, "a": {"y": "2"}})
    assert text == "[b]\nx = 1\n\n[a]\ny = 2\n"


def test_venv_install_is_skipped_once_complete(tmp_path, monkeypatch):
    calls = []

    def run(argv, **kwargs):
        calls.append(list(argv))
        if argv[1:3] == ["-m", "venv"]:
            (tmp_path / "venvs" / "svc-1.0" / "bin").mkdir(parents=True)

    monkeypatch.setattr(venvs.procs, "run", run)
    venv = tmp_path / "venvs" / "svc-1.0"
    venvs.install(venv, ["svc==1.0", "gunicorn"], log=tmp_path / "install.log", version="1.0")
    assert calls == [[sys.executable, "-m", "venv", str(venv)],
                     [str(venv / "bin" / "pip"), "install", "-q", "svc==1.0", "gunicorn"]]
    assert (venv / venvs.MARKER).read_text() == "1.0\n"
    venvs.install(venv, ["svc==1.0"], log=tmp_path / "install.log", version="1.0")
    assert len(calls) == 2


# -- the stack's auth mode ----------------------------------------------------
def test_auth_mode_is_noauth_until_switched(tmp_path):
    layout = _layout(tmp_path)
    assert layout.auth_mode == "noauth"
    assert not layout.keystone_mode
    layout.set_auth_mode("keystone")
    assert layout.auth_mode_file.read_text() == "keystone\n"
    assert layout.keystone_mode
    layout.set_auth_mode("noauth")
    assert layout.auth_mode == "noauth"
    with pytest.raises(ValueError, match="unknown auth mode 'token'"):
        layout.set_auth_mode("token")
    layout.auth_mode_file.write_text("token\n")
    with pytest.raises(ValueError, match="unknown auth mode"):
        layout.auth_mode  # noqa: B018


def test_cli_up_switches_or_keeps_the_mode():
    assert cli.parser().parse_args(["up"]).mode is None
    assert cli.parser().parse_args(["up", "--keystone"]).mode == "keystone"
    assert cli.parser().parse_args(["up", "--noauth"]).mode == "noauth"
    with pytest.raises(SystemExit):
        cli.parser().parse_args(["up", "--keystone", "--noauth"])


def test_keystone_runs_before_neutron_in_keystone_mode_only(tmp_path):
    layout = _layout(tmp_path)
    names = [c.name for c in stack.components(layout)]
    assert "keystone" not in names
    # `down` stops it in either mode.
    names = [c.name for c in stack.components(layout, keystone=True)]
    assert names.index("mariadb") < names.index("keystone") < names.index("neutron")
    layout.set_auth_mode("keystone")
    assert [c.name for c in stack.components(layout)] == names


def test_env_exports_the_admin_in_keystone_mode(tmp_path):
    layout = _layout(tmp_path)
    layout.set_auth_mode("keystone")
    text = stack.env_exports(layout)
    assert text.startswith("unset OS_ENDPOINT\n")
    for key, value in keystone.admin_env().items():
        assert f"export {key}={value}\n" in text
    assert "export OS_USERNAME=admin\n" in text
    assert "OS_AUTH_TYPE=password" in text
    assert f"export DOCKER_HOST={layout.docker_host}\n" in text


def test_neutron_conf_follows_the_auth_mode(tmp_path):
    layout = _layout(tmp_path)
    server = NeutronServer(layout)
    noauth = _ini(server.neutron_conf())
    assert noauth["DEFAULT"]["auth_strategy"] == "noauth"
    assert not noauth.has_section("keystone_authtoken")
    assert not noauth.has_section("oslo_policy")
    server.dir.mkdir(parents=True)
    (server.dir / "neutron.conf").write_text(server.neutron_conf())
    assert not server.config_outdated()

    layout.set_auth_mode("keystone")
    assert server.config_outdated(), "a running noauth Neutron must be restarted"
    conf = _ini(server.neutron_conf())
    assert conf["DEFAULT"]["auth_strategy"] == "keystone"
    assert dict(conf["keystone_authtoken"]) == keystone.neutron_auth_settings()[
        "keystone_authtoken"]
    assert conf["oslo_policy"]["policy_file"] == str(server.policy_file)
    # Everything else as in noauth mode.
    assert conf["database"]["connection"] == noauth["database"]["connection"]
    assert conf["DEFAULT"]["service_plugins"] == noauth["DEFAULT"]["service_plugins"]


def test_kuryr_conf_follows_the_auth_mode(tmp_path):
    layout = _layout(tmp_path)
    layout.base.mkdir(parents=True)
    plugin = KuryrPlugin(layout)
    noauth = _ini(plugin.kuryr_conf())
    assert dict(noauth["neutron"]) == {"auth_type": "none", "endpoint": layout.neutron_url,
                                       "vif_plugging_timeout": "30"}
    plugin.write_config()
    assert layout.kuryr_conf.stat().st_mode & 0o777 == 0o600
    assert not plugin.config_outdated()

    layout.set_auth_mode("keystone")
    assert plugin.config_outdated(), "a running noauth Kuryr must be restarted"
    plugin.write_config()
    conf = _ini(layout.kuryr_conf.read_text())
    assert dict(conf["neutron"]) == {**keystone.kuryr_auth_options(),
                                     "vif_plugging_timeout": "30"}
    assert conf["neutron"]["username"] == "kuryr"
    for section in ("DEFAULT", "binding", "publish"):
        assert dict(conf[section]) == dict(noauth[section])
    loaded = config.load([], config_files=[str(layout.kuryr_conf)])
    assert loaded.neutron.auth_type == "password"
    assert loaded.publish.floating_ip_network == "public"
    assert loaded.docker_uri == f"unix://{layout.docker_sock}"

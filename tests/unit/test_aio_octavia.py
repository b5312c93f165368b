"""kuryr-aio's Octavia (OVN provider): its config, its keystone settings and
its place in the stack (pure parts; the real stack runs it with `up --k8s`)."""


from keystoneauth1 import loading as ks_loading
from keystoneauth1 import noauth
from keystoneauth1.identity import generic
from oslo_config import cfg

from kuryr.aio import keystone, octavia, stack
from kuryr.aio.layout import OCTAVIA_VERSION, OVN_OCTAVIA_PROVIDER_VERSION, Layout

from .ini import parse_ini


def _layout(tmp_path):
    return Layout(base=tmp_path / "base", run=tmp_path / "run", host="h1",
                  cache=tmp_path / "cache")


_ini = parse_ini


def _component(tmp_path):
    return octavia.Octavia(_layout(tmp_path), socket_dir=tmp_path / "octavia-run")


def test_noauth_conf_enables_the_ovn_provider_only(tmp_path):
    layout = _layout(tmp_path)
    conf = _ini(octavia.octavia_conf(layout))
    assert conf["api_settings"]["auth_strategy"] == "noauth"
    assert conf["api_settings"]["enabled_provider_drivers"] == "ovn:Octavia OVN driver"
    assert conf["api_settings"]["default_provider_driver"] == "ovn"
    assert conf["driver_agent"]["enabled_provider_agents"] == "ovn"
    assert conf["ovn"]["ovn_nb_connection"] == f"unix:{layout.nb_sock}"
    assert conf["ovn"]["ovn_sb_connection"] == f"unix:{layout.sb_sock}"
    password = layout.db_password_file("octavia").read_text().strip()
    assert conf["database"]["connection"] == (
        f"mysql+pymysql://octavia:{password}@localhost/octavia"
        f"?unix_socket={layout.mysql_sock}&charset=utf8")
    assert conf["networking"]["allow_invisible_resource_usage"] == "True"
    assert not conf.has_section("keystone_authtoken")


def test_noauth_conf_reaches_neutron_without_a_token(tmp_path):
    layout = _layout(tmp_path)
    conf = _ini(octavia.octavia_conf(layout))
    assert dict(conf["service_auth"]) == {"auth_type": "none", "endpoint": layout.neutron_url}
    # auth_type in [neutron] would clash with the OVN provider's own
    # [neutron] endpoint option: the auth comes from [service_auth].
    assert dict(conf["neutron"]) == {"auth_section": "service_auth",
                                     "endpoint_override": layout.neutron_url}


def _load_auth(tmp_path, text, section="service_auth"):
    conf_file = tmp_path / "octavia.conf"
    conf_file.write_text(text)
    conf = cfg.ConfigOpts()
    ks_loading.register_auth_conf_options(conf, section)
    conf(args=[], default_config_files=[str(conf_file)])
    return ks_loading.load_auth_from_conf_options(conf, section)


def test_service_auth_loads_as_keystoneauth_plugins(tmp_path):
    layout = _layout(tmp_path)
    auth = _load_auth(tmp_path, octavia.octavia_conf(layout))
    assert isinstance(auth, noauth.NoAuth)
    assert auth.endpoint == layout.neutron_url
    layout.set_auth_mode("keystone")
    auth = _load_auth(tmp_path, octavia.octavia_conf(layout))
    assert isinstance(auth, generic.Password)
    assert (auth._username, auth._password) == (keystone.OCTAVIA_USER,
                                                keystone.OCTAVIA_PASSWORD)
    assert auth._project_name == keystone.SERVICE_PROJECT


def test_keystone_conf_checks_tokens_as_the_octavia_user(tmp_path):
    layout = _layout(tmp_path)
    layout.set_auth_mode("keystone")
    conf = _ini(octavia.octavia_conf(layout))
    assert conf["api_settings"]["auth_strategy"] == "keystone"
    authtoken = conf["keystone_authtoken"]
    assert authtoken["www_authenticate_uri"] == keystone.AUTH_URL
    assert authtoken["auth_type"] == "password"
    assert authtoken["username"] == keystone.OCTAVIA_USER
    assert authtoken["project_name"] == keystone.SERVICE_PROJECT
    assert conf["service_auth"]["username"] == keystone.OCTAVIA_USER
    assert "endpoint" not in conf["service_auth"]
    assert conf["neutron"]["endpoint_override"] == layout.neutron_url


def test_keystone_roles():
    # Octavia's default load-balancer:write is role:member on the project:
    # Kuryr's user has it; Octavia's own needs no admin either.
    assert keystone.KURYR_LOAD_BALANCER_ROLE == "member"
    assert keystone.KURYR_LOAD_BALANCER_ROLE in keystone.KURYR_ROLES
    assert keystone.OCTAVIA_ROLES == ("service",)
    assert keystone.octavia_auth_settings()["api_settings"] == {"auth_strategy": "keystone"}


def test_write_config_is_root_only_and_sets_argv_before_the_import(tmp_path):
    component = _component(tmp_path)
    component.write_config()
    assert component.config_file.stat().st_mode & 0o777 == 0o600
    assert not component.config_outdated()
    wsgi = (component.dir / f"{octavia.WSGI_MODULE}.py").read_text()
    argv = f'sys.argv = ["octavia-api"] + {component.config_args!r}'
    assert argv in wsgi
    assert wsgi.index(argv) < wsgi.index("from octavia.wsgi.api import application")
    compile(wsgi, "wsgi", "exec")
    # An auth mode switch makes `up` restart both processes.
    component.layout.set_auth_mode("keystone")
    assert component.config_outdated()


def test_venv_is_software_in_the_cache(tmp_path):
    layout = _layout(tmp_path)
    assert layout.octavia_venv == tmp_path / "cache" / "venvs" / f"octavia-{OCTAVIA_VERSION}"
    assert not layout.octavia_venv.is_relative_to(layout.base)
    assert f"octavia=={OCTAVIA_VERSION}" in octavia.OCTAVIA_PACKAGES
    assert f"ovn-octavia-provider=={OVN_OCTAVIA_PROVIDER_VERSION}" in octavia.OCTAVIA_PACKAGES
    assert {"gunicorn", "pymysql"} <= set(octavia.OCTAVIA_PACKAGES)
    assert layout.octavia_url == "http://127.0.0.1:9876"


def test_problems_name_both_processes(tmp_path):
    component = _component(tmp_path)
    assert component.problems() == ["octavia-driver-agent is not running",
                                    "octavia-api is not running"]
    assert [p.name for p in component.logs] == [
        "octavia-api.log", "octavia-access.log", "octavia-driver-agent.log"]


def test_down_removes_a_dead_agents_sockets(tmp_path):
    component = _component(tmp_path)
    component.socket_dir.mkdir()
    for sock in component.sockets:
        sock.touch()
    component.layout.run.mkdir(parents=True)
    component.agent_pid.write_text("999999999\n")  # no such process
    component.down()
    assert not component.agent_pid.exists()
    assert not component.socket_dir.exists()


def test_down_leaves_sockets_it_did_not_make(tmp_path):
    component = _component(tmp_path)
    component.socket_dir.mkdir()
    for sock in component.sockets:
        sock.touch()
    component.down()
    assert all(sock.exists() for sock in component.sockets)


def test_octavia_runs_with_the_cluster_before_kuryrs_controller(tmp_path):
    layout = _layout(tmp_path)
    assert "octavia" not in [c.name for c in stack.components(layout)]
    assert "OS_LOAD_BALANCER_ENDPOINT_OVERRIDE" not in stack.env_exports(layout)
    layout.base.mkdir(parents=True)
    layout.k8s_mode_file.touch()
    names = [c.name for c in stack.components(layout)]
    assert names.index("neutron") < names.index("octavia") < \
        names.index("kuryr-k8s-controller")
    assert names.index("kube-scheduler") < names.index("octavia")
    # `down` stops in reverse: the controller before Octavia.
    down = [c.name for c in reversed(stack.components(layout, kubernetes=True))]
    assert down.index("kuryr-k8s-controller") < down.index("octavia")
    assert "export OS_LOAD_BALANCER_ENDPOINT_OVERRIDE=http://127.0.0.1:9876\n" in \
        stack.env_exports(layout)

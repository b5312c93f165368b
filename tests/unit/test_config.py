import subprocess
import sys
from pathlib import Path

import pytest

from kuryr import cli, config, server
from kuryr.neutron.client import NeutronConfigError, connect

ROOT = Path(__file__).resolve().parents[2]

LEGACY_CONF = """
[DEFAULT]
kuryr_uri = http://127.0.0.1:23750
capability_scope = local
process_external_connectivity = False

[neutron]
auth_url = http://127.0.0.1:5000/v3
auth_type = password
username = kuryr
password = secret
project_name = service
user_domain_name = Default
project_domain_name = Default
default_subnetpool_v4 = kuryr
vif_plugging_timeout = 10

[binding]
default_driver = kuryr.lib.binding.drivers.veth
"""


def test_sample_config_is_generated_from_the_code(tmp_path):
    out = tmp_path / "kuryr.conf.sample"
    subprocess.run(
        [sys.executable, "-m", "oslo_config.generator", "--namespace", "kuryr",
         "--wrap-width", "79", "--output-file", str(out)],
        check=True, cwd=ROOT)
    committed = (ROOT / "etc" / "kuryr.conf.sample").read_text()
    assert out.read_text() == committed, ("run oslo-config-generator --config-file "
                                          "etc/kuryr-config-generator.conf and commit "
                                          "etc/kuryr.conf.sample")


def test_kuryr_libnetwork_config_file_is_accepted(tmp_path):
    path = tmp_path / "kuryr.conf"
    path.write_text(LEGACY_CONF)
    conf = config.load([], [str(path)])
    assert conf.kuryr_uri == "http://127.0.0.1:23750"
    assert conf.process_external_connectivity is False
    assert conf.neutron.auth_type == "password"
    assert conf.neutron.vif_plugging_timeout == 10
    assert conf.binding.default_driver == "kuryr.lib.binding.drivers.veth"


def test_missing_auth_type_is_a_clear_error(tmp_path):
    path = tmp_path / "kuryr.conf"
    path.write_text("[neutron]\n")
    conf = config.load([], [str(path)])
    with pytest.raises(NeutronConfigError, match="auth_type"):
        connect(conf)


def test_bad_value_names_the_option(tmp_path):
    path = tmp_path / "kuryr.conf"
    path.write_text("[DEFAULT]\ncapability_scope = galactic\n")
    conf = config.load([], [str(path)])
    with pytest.raises(ValueError, match="capability_scope"):
        _ = conf.capability_scope


def test_pool_size_is_read_under_its_name_and_its_old_one(tmp_path):
    for name in ("size", "ports_per_network"):
        path = tmp_path / f"{name}.conf"
        path.write_text(f"[pool]\n{name} = 0\n")
        assert config.load([], [str(path)]).pool.size == 0, name
    assert config.load([], []).pool.size == 3


# -- where the config comes from -------------------------------------------------

def write_conf(path, kuryr_uri):
    path.write_text(f"[DEFAULT]\nkuryr_uri = {kuryr_uri}\n")
    return path


def test_kuryr_config_file_is_read_without_config_file(tmp_path, monkeypatch):
    path = write_conf(tmp_path / "aio.conf", "unix:///tmp/from-env.sock")
    monkeypatch.setenv("KURYR_CONFIG_FILE", str(path))
    conf = config.load([])
    assert conf.kuryr_uri == "unix:///tmp/from-env.sock"
    assert config.describe_sources(conf) == f"config: {path} (from KURYR_CONFIG_FILE)"


@pytest.mark.parametrize("form", ["separate", "equals"])
def test_config_file_on_the_command_line_wins_over_kuryr_config_file(tmp_path, monkeypatch,
                                                                       form):
    env_file = write_conf(tmp_path / "aio.conf", "unix:///tmp/from-env.sock")
    cli_file = write_conf(tmp_path / "cli.conf", "unix:///tmp/from-cli.sock")
    monkeypatch.setenv("KURYR_CONFIG_FILE", str(env_file))
    args = (["--config-file", str(cli_file)] if form == "separate"
            else [f"--config-file={cli_file}"])
    conf = config.load(args)
    assert conf.kuryr_uri == "unix:///tmp/from-cli.sock"
    assert config.describe_sources(conf) == f"config: {cli_file} (from --config-file)"


def test_config_file_on_the_command_line_wins_over_a_missing_kuryr_config_file(
        tmp_path, monkeypatch):
    cli_file = write_conf(tmp_path / "cli.conf", "unix:///tmp/from-cli.sock")
    monkeypatch.setenv("KURYR_CONFIG_FILE", str(tmp_path / "gone.conf"))
    assert config.load(["--config-file", str(cli_file)]).kuryr_uri == \
        "unix:///tmp/from-cli.sock"


def test_missing_kuryr_config_file_is_an_error_naming_variable_and_path(tmp_path,
                                                                        monkeypatch):
    missing = tmp_path / "gone.conf"
    monkeypatch.setenv("KURYR_CONFIG_FILE", str(missing))
    with pytest.raises(config.ConfigFileMissing,
                       match=f"KURYR_CONFIG_FILE={missing}: {missing} does not exist"):
        config.load([])


def test_kuryr_config_file_naming_a_directory_is_an_error(tmp_path, monkeypatch):
    monkeypatch.setenv("KURYR_CONFIG_FILE", str(tmp_path))
    with pytest.raises(config.ConfigFileMissing, match="is not a file"):
        config.load([])


def test_files_given_by_the_caller_ignore_kuryr_config_file(tmp_path, monkeypatch):
    # kuryr-aio loads its own kuryr.conf this way, whatever the shell exports.
    monkeypatch.setenv("KURYR_CONFIG_FILE", str(tmp_path / "gone.conf"))
    path = write_conf(tmp_path / "own.conf", "unix:///tmp/own.sock")
    assert config.load([], [str(path)]).kuryr_uri == "unix:///tmp/own.sock"


def test_sources_name_config_dir_files_after_the_files(tmp_path):
    path = write_conf(tmp_path / "kuryr.conf", "unix:///tmp/a.sock")
    conf_d = tmp_path / "kuryr.conf.d"
    conf_d.mkdir()
    write_conf(conf_d / "20-b.conf", "unix:///tmp/b.sock")
    write_conf(conf_d / "10-a.conf", "unix:///tmp/c.sock")
    (conf_d / "ignored.txt").write_text("")
    conf = config.load(["--config-file", str(path), "--config-dir", str(conf_d)])
    assert conf.kuryr_uri == "unix:///tmp/b.sock"
    assert config.sources(conf) == [f"{path} (from --config-file)",
                                    f"{conf_d / '10-a.conf'} (from {conf_d})",
                                    f"{conf_d / '20-b.conf'} (from {conf_d})"]


def test_no_config_file_at_all_is_said(monkeypatch, tmp_path):
    monkeypatch.setattr(config, "DEFAULT_CONFIG_FILE", str(tmp_path / "none.conf"))
    conf = config.load([])
    assert config.sources(conf) == []
    assert config.describe_sources(conf).startswith("config: none, built-in defaults only")


def test_every_command_exits_2_on_a_missing_kuryr_config_file(tmp_path, capsys, monkeypatch):
    missing = tmp_path / "gone.conf"
    monkeypatch.setenv("KURYR_CONFIG_FILE", str(missing))

    def must_not_run(*args, **kwargs):
        pytest.fail("a command ran without its config file")

    # Should loading go wrong, nothing binds the plugin socket or asks Neutron.
    monkeypatch.setattr(server, "serve", must_not_run)
    for name in ("list_ports", "collect_garbage", "status"):
        monkeypatch.setattr(cli, name, must_not_run)
    for command in ("serve", "ports", "gc", "status"):
        assert cli.main([command]) == 2
        captured = capsys.readouterr()
        assert captured.out == ""
        assert f"KURYR_CONFIG_FILE={missing}" in captured.err, command


def test_missing_config_file_on_the_command_line_exits_2_without_a_traceback(tmp_path,
                                                                             capsys):
    missing = tmp_path / "gone.conf"
    assert cli.main(["status", "--config-file", str(missing)]) == 2
    err = capsys.readouterr().err
    assert str(missing) in err
    assert "Traceback" not in err


def test_help_says_where_the_config_comes_from(capsys):
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    out = capsys.readouterr().out
    assert "--config-file FILE" in out
    assert "KURYR_CONFIG_FILE" in out
    assert "/etc/kuryr/kuryr.conf" in out


@pytest.mark.parametrize("argv", [["--config-file", "{f}", "status"],
                                  ["status", "--config-file", "{f}"],
                                  ["--config-file={f}", "status"]])
def test_config_file_may_come_before_or_after_the_command(tmp_path, monkeypatch, argv):
    """`kuryr --config-file F status` once took F for the command (exit 2)."""
    conf_file = write_conf(tmp_path / "k.conf", "unix:///tmp/given.sock")
    seen = []
    monkeypatch.setattr(cli, "status", lambda conf: seen.append(conf.kuryr_uri) or 0)
    assert cli.main([a.format(f=conf_file) for a in argv]) == 0
    assert seen == ["unix:///tmp/given.sock"]

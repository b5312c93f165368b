import subprocess
import sys
from pathlib import Path

import pytest

from kuryr import config
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

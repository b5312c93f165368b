"""The CNI protocol against the spec's text and examples (containernetworking/cni
SPEC.md): parsing the environment and configuration, rendering per version."""

import json

import pytest

from kuryr.cni import protocol, wire
from kuryr.cni.protocol import CniError, Code, Command

ADD_ENV = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "3f2a9c", "CNI_NETNS": "/var/run/netns/blue",
           "CNI_IFNAME": "eth0", "CNI_PATH": "/opt/cni/bin:/usr/lib/cni",
           "CNI_ARGS": "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0;"
                       "K8S_POD_INFRA_CONTAINER_ID=3f2a9c;K8S_POD_UID=1234-abcd"}

# SPEC.md, "Add example": the configuration the bridge plugin gets.
SPEC_CONFIG = {"cniVersion": "1.1.0", "name": "dbnet", "type": "bridge", "bridge": "cni0",
               "keyA": ["some more", "plugin specific", "configuration"],
               "ipam": {"type": "host-local", "subnet": "10.1.0.0/16", "gateway": "10.1.0.1"},
               "dns": {"nameservers": ["10.1.0.1"]}}

# SPEC.md, "Add example": the bridge plugin's result.
SPEC_RESULT = {
    "ips": [{"address": "10.1.0.5/16", "gateway": "10.1.0.1", "interface": 2}],
    "routes": [{"dst": "0.0.0.0/0"}],
    "interfaces": [{"name": "cni0", "mac": "00:11:22:33:44:55"},
                   {"name": "veth3243", "mac": "55:44:33:22:11:11"},
                   {"name": "eth0", "mac": "99:88:77:66:55:44", "sandbox": "/var/run/netns/blue"}],
    "dns": {"nameservers": ["10.1.0.1"]},
}


def config(**changes):
    raw = {**SPEC_CONFIG, **changes}
    return json.dumps({k: v for k, v in raw.items() if v is not None}).encode()


def code_of(call, *args):
    with pytest.raises(CniError) as caught:
        call(*args)
    return caught.value


# -- environment ----------------------------------------------------------------------
def test_environment_of_an_add_names_the_pod():
    env = protocol.parse_environment(ADD_ENV)
    assert env.command is Command.ADD
    assert (env.container_id, env.netns, env.ifname) == ("3f2a9c", "/var/run/netns/blue", "eth0")
    assert env.path == ("/opt/cni/bin", "/usr/lib/cni")
    assert env.pod == protocol.Pod("default", "web-0", "1234-abcd", "3f2a9c")
    assert env.args["IgnoreUnknown"] == "1"


def test_environment_without_k8s_args_has_no_pod():
    env = protocol.parse_environment({**ADD_ENV, "CNI_ARGS": ""})
    assert env.pod is None


@pytest.mark.parametrize("missing", ["CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"])
def test_add_without_a_required_variable_is_error_4_naming_it(missing):
    env = {k: v for k, v in ADD_ENV.items() if k != missing}
    error = code_of(protocol.parse_environment, env)
    assert error.code == Code.INVALID_ENVIRONMENT
    assert missing in error.msg


def test_del_needs_no_netns():
    env = {k: v for k, v in ADD_ENV.items() if k != "CNI_NETNS"}
    assert protocol.parse_environment({**env, "CNI_COMMAND": "DEL"}).netns == ""


@pytest.mark.parametrize("command", ["STATUS", "VERSION", "GC"])
def test_commands_about_the_plugin_need_only_the_command(command):
    assert protocol.parse_environment({"CNI_COMMAND": command}).command == command


@pytest.mark.parametrize(("env", "named"), [
    ({}, "CNI_COMMAND"),
    ({"CNI_COMMAND": "FROB"}, "FROB"),
    ({**ADD_ENV, "CNI_CONTAINERID": "-starts-with-dash"}, "CNI_CONTAINERID"),
    ({**ADD_ENV, "CNI_CONTAINERID": "has/slash"}, "CNI_CONTAINERID"),
    ({**ADD_ENV, "CNI_IFNAME": "a-name-that-is-too-long"}, "CNI_IFNAME"),
    ({**ADD_ENV, "CNI_IFNAME": "eth/0"}, "CNI_IFNAME"),
    ({**ADD_ENV, "CNI_ARGS": "K8S_POD_NAME"}, "CNI_ARGS"),
])
def test_invalid_environment_is_error_4(env, named):
    error = code_of(protocol.parse_environment, env)
    assert error.code == Code.INVALID_ENVIRONMENT
    assert named in error.msg


# -- configuration --------------------------------------------------------------------
def test_the_spec_example_configuration_parses():
    parsed = protocol.parse_config(Command.ADD, config())
    assert (parsed.cni_version, parsed.name, parsed.type) == ("1.1.0", "dbnet", "bridge")
    assert parsed.daemon_socket == protocol.DEFAULT_DAEMON_SOCKET
    assert parsed.raw["keyA"] == SPEC_CONFIG["keyA"]  # passed on whole to the daemon
    assert parsed.prev_result is None


def test_daemon_socket_is_read_from_the_configuration():
    parsed = protocol.parse_config(Command.ADD, config(daemon_socket="/run/k/cni.sock"))
    assert parsed.daemon_socket == "/run/k/cni.sock"


@pytest.mark.parametrize("stdin", [b"", b"{not json", b"\xff\xfe", b"[1, 2]", b'"dbnet"'])
def test_undecodable_configuration_is_error_6(stdin):
    assert code_of(protocol.parse_config, Command.ADD, stdin).code == Code.DECODE_FAILURE


@pytest.mark.parametrize("version", ["0.1.0", "0.2.0", "2.0.0", "1.1", None])
def test_unsupported_version_is_error_1(version):
    error = code_of(protocol.parse_config, Command.ADD, config(cniVersion=version))
    assert error.code == Code.INCOMPATIBLE_VERSION


@pytest.mark.parametrize("changes", [
    {"name": None}, {"name": ""}, {"name": "-bad"}, {"daemon_socket": "relative.sock"},
    {"daemon_socket": 5}, {"prevResult": [1]}, {"cni.dev/valid-attachments": [{"x": 1}]},
])
def test_invalid_configuration_is_error_7(changes):
    error = code_of(protocol.parse_config, Command.ADD, config(**changes))
    assert error.code == Code.INVALID_CONFIG


@pytest.mark.parametrize(("command", "too_old", "oldest"), [
    (Command.CHECK, "0.3.1", "0.4.0"), (Command.GC, "1.0.0", "1.1.0"),
    (Command.STATUS, "1.0.0", "1.1.0"),
])
def test_commands_exist_from_their_spec_version_on(command, too_old, oldest):
    # libcni's skel: "config version does not allow CHECK" is code 1.
    error = code_of(protocol.parse_config, command, config(cniVersion=too_old))
    assert error.code == Code.INCOMPATIBLE_VERSION
    assert protocol.parse_config(command, config(cniVersion=oldest)).cni_version == oldest


def test_check_reads_prev_result():
    parsed = protocol.parse_config(Command.CHECK, config(cniVersion="0.4.0",
                                                         prevResult=SPEC_RESULT))
    assert parsed.prev_result == SPEC_RESULT


def test_gc_reads_valid_attachments():
    attachments = [{"containerID": "abc", "ifname": "eth0"}]
    parsed = protocol.parse_config(Command.GC, config(**{"cni.dev/valid-attachments":
                                                         attachments}))
    assert parsed.valid_attachments == (protocol.Attachment("abc", "eth0"),)


# -- VERSION --------------------------------------------------------------------------
@pytest.mark.parametrize("version", protocol.SUPPORTED_VERSIONS)
def test_version_answers_in_the_version_asked(version):
    stdin = json.dumps({"cniVersion": version}).encode()
    assert protocol.render_version(protocol.requested_version(stdin)) == {
        "cniVersion": version,
        "supportedVersions": ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]}


@pytest.mark.parametrize("stdin", [b"", b"garbage", b"[]", b'{"cniVersion": 3}'])
def test_version_answers_whatever_was_sent(stdin):
    assert protocol.requested_version(stdin) == "1.1.0"


# -- results --------------------------------------------------------------------------
def spec_result():
    return wire.result_from_answer(SPEC_RESULT)


@pytest.mark.parametrize("version", ["1.0.0", "1.1.0"])
def test_result_since_1_0_0_is_the_spec_example(version):
    assert protocol.render_result(spec_result(), version) == {"cniVersion": version,
                                                              **SPEC_RESULT}


@pytest.mark.parametrize("version", ["0.3.0", "0.3.1", "0.4.0"])
def test_result_before_1_0_0_gives_each_ip_its_version(version):
    rendered = protocol.render_result(spec_result(), version)
    assert rendered["ips"] == [{"version": "4", "address": "10.1.0.5/16",
                                "gateway": "10.1.0.1", "interface": 2}]
    assert rendered["interfaces"] == SPEC_RESULT["interfaces"]
    assert rendered["cniVersion"] == version


def test_ipv6_and_interface_zero_and_1_1_0_fields():
    result = protocol.Result(
        interfaces=(protocol.Interface("eth0", "fa:16:3e:00:00:01", "/run/netns/x", mtu=1442),),
        ips=(protocol.IPConfig("fd00::5/64", "fd00::1", 0),),
        routes=(protocol.Route("::/0", "fd00::1", table=0, scope=0),),
        dns=protocol.Dns(("fd00::2",), "cluster.local", ("default.svc.cluster.local",)))
    modern = protocol.render_result(result, "1.1.0")
    assert modern["interfaces"] == [{"name": "eth0", "mac": "fa:16:3e:00:00:01",
                                     "sandbox": "/run/netns/x", "mtu": 1442}]
    assert modern["ips"] == [{"address": "fd00::5/64", "gateway": "fd00::1", "interface": 0}]
    assert modern["routes"] == [{"dst": "::/0", "gw": "fd00::1", "table": 0, "scope": 0}]
    assert modern["dns"] == {"nameservers": ["fd00::2"], "domain": "cluster.local",
                             "search": ["default.svc.cluster.local"]}
    old = protocol.render_result(result, "0.3.1")
    assert old["ips"][0]["version"] == "6"
    assert old["interfaces"][0] == {"name": "eth0", "mac": "fa:16:3e:00:00:01",
                                    "sandbox": "/run/netns/x"}
    assert old["routes"] == [{"dst": "::/0", "gw": "fd00::1"}]


def test_daemon_answer_round_trips():
    assert wire.result_from_answer(wire.result_as_answer(spec_result())) == spec_result()


@pytest.mark.parametrize("answer", [
    {"ips": [{"address": "10.1.0.5"}]},  # no prefix length
    {"ips": [{"address": "10.1.0.500/24"}]},
    {"ips": [{"address": "10.1.0.5/24", "interface": 1}], "interfaces": [{"name": "eth0"}]},
    {"interfaces": [{"mac": "aa:bb:cc:dd:ee:ff"}]},
    {"routes": [{"dst": "0.0.0.0/0", "mtu": -1}]},
    {"dns": {"nameservers": "10.0.0.1"}},
])
def test_malformed_daemon_result_is_kuryr_error_100(answer):
    error = code_of(wire.result_from_answer, answer)
    assert error.code == Code.DAEMON_ANSWER_UNREADABLE


# -- errors ---------------------------------------------------------------------------
def test_error_renders_as_the_spec_example():
    error = CniError(Code.INVALID_CONFIG, "Invalid Configuration",
                     "Network 192.168.0.0/31 too small to allocate from.")
    assert protocol.render_error(error, "1.1.0") == {
        "cniVersion": "1.1.0", "code": 7, "msg": "Invalid Configuration",
        "details": "Network 192.168.0.0/31 too small to allocate from."}


def test_error_version_is_the_configurations_when_supported():
    assert protocol.error_version(config(cniVersion="0.4.0")) == "0.4.0"
    assert protocol.error_version(config(cniVersion="9.9.9")) == "1.1.0"
    assert protocol.error_version(b"{") == "1.1.0"


def test_del_of_an_unknown_container_succeeds():
    assert protocol.del_succeeds_despite(CniError(Code.UNKNOWN_CONTAINER, "no such container"))
    assert not protocol.del_succeeds_despite(CniError(Code.TRY_AGAIN_LATER, "later"))


# -- the daemon's answers ---------------------------------------------------------------
def test_daemon_error_passes_through():
    body = json.dumps({"code": 7, "msg": "no subnet", "details": "namespace default"}).encode()
    error = code_of(wire.decode_answer, 400, body)
    assert (error.code, error.msg, error.details) == (7, "no subnet", "namespace default")


@pytest.mark.parametrize(("status", "body"), [
    (500, b"Internal Server Error"), (200, b"[]"), (404, b'{"detail": "Not Found"}'),
])
def test_daemon_answer_that_is_no_cni_answer_is_kuryr_error_100(status, body):
    assert code_of(wire.decode_answer, status, body).code == Code.DAEMON_ANSWER_UNREADABLE


def test_request_body_carries_the_contract_fields():
    env = protocol.parse_environment(ADD_ENV)
    request = protocol.Request(env, protocol.parse_config(Command.ADD, config()))
    body = json.loads(wire.encode_request(request))
    assert body == {
        "command": "ADD", "cniVersion": "1.1.0", "containerId": "3f2a9c",
        "netns": "/var/run/netns/blue", "ifname": "eth0",
        "pod": {"namespace": "default", "name": "web-0", "uid": "1234-abcd",
                "infraContainerId": "3f2a9c"},
        "args": dict(env.args), "validAttachments": [], "config": SPEC_CONFIG}
    assert wire.path_for(Command.ADD) == "/v1/add"

import pytest

from kuryr import errors
from kuryr.publish import spec

OPTIONS = {
    "com.docker.network.portmap": [
        {"Proto": 6, "Port": 80, "HostIP": "127.0.0.1", "HostPort": 18080, "HostPortEnd": 18080},
        {"Proto": 17, "Port": 53, "HostIP": "", "HostPort": 0, "HostPortEnd": 0},
        {"Proto": 6, "Port": 81, "HostIP": "", "HostPort": 9000, "HostPortEnd": 9005},
    ],
    "com.docker.network.endpoint.exposedports": [{"Proto": 6, "Port": 9999},
                                                 {"Proto": 6, "Port": 80}],
}


def test_published_ports_from_docker_options():
    got = spec.published_ports(OPTIONS)
    assert spec.Published("tcp", 80, "127.0.0.1", 18080) in got
    assert spec.Published("udp", 53, "", 0) in got
    assert spec.Published("tcp", 81, "", 9000, 9005) in got


def test_exposed_ports_include_published_container_ports_once():
    assert spec.exposed_ports(OPTIONS) == [
        spec.Exposed("tcp", 80), spec.Exposed("tcp", 81), spec.Exposed("tcp", 9999),
        spec.Exposed("udp", 53)]


def test_description_round_trip():
    published = spec.published_ports(OPTIONS)
    text = spec.encode(published, "sg-1")
    assert len(text) <= 255
    group, back = spec.decode(text)
    assert group == "sg-1"
    assert [(p.proto, p.container_port, p.host_ip, p.host_port) for p in back] == \
        [(p.proto, p.container_port, p.host_ip, p.host_port) for p in published]
    assert spec.decode("a user's own description") == (None, [])


@pytest.mark.parametrize(("entry", "needle"), [
    ({"Proto": 99, "Port": 1}, "protocol"),
    ({"Proto": 6, "Port": 70000}, "out of range"),
    ({"Proto": 6, "Port": 80, "HostIP": "nope"}, "not an address"),
    ({"Proto": 6, "Port": 80, "HostPort": 9, "HostPortEnd": 3}, "reversed"),
    ({"Proto": 132, "Port": 80}, "sctp"),
])
def test_bad_port_maps_are_named(entry, needle):
    with pytest.raises(errors.InvalidInput, match=needle):
        spec.published_ports({"com.docker.network.portmap": [entry]})


def test_too_many_ports_for_the_description_is_an_error():
    many = [spec.Published("tcp", p, "", 20000 + p) for p in range(1, 40)]
    with pytest.raises(errors.InvalidInput, match="too many"):
        spec.encode(many, None)


@pytest.mark.parametrize(("options", "needle"), [
    ({"com.docker.network.portmap": 80}, "portmap must be a list of objects"),
    ({"com.docker.network.portmap": "80:80"}, "portmap must be a list of objects"),
    ({"com.docker.network.portmap": ["80"]}, r"portmap\[0\] must be an object"),
    ({"com.docker.network.endpoint.exposedports": "80"}, "exposedports must be a list"),
    ({"com.docker.network.endpoint.exposedports": [80]}, r"exposedports\[0\] must be"),
    ({"com.docker.network.portmap": [{"Proto": 6, "Port": True}]}, r"\[0\]\.Port: "),
    ({"com.docker.network.portmap": [{"Proto": 6, "Port": 80.5}]}, r"\[0\]\.Port: "),
    ({"com.docker.network.portmap": [{"Proto": 6, "Port": 80, "HostPort": float("inf")}]},
     r"\[0\]\.HostPort: "),
    ({"com.docker.network.portmap": [{"Proto": 6, "Port": 80, "HostPortEnd": False}]},
     r"\[0\]\.HostPortEnd: "),
    ({"com.docker.network.portmap": [{"Proto": 6.0, "Port": 80}]}, r"\[0\]\.Proto: "),
    ({"com.docker.network.portmap": [{"Proto": 6, "Port": 80, "HostIP": 1}]}, "HostIP"),
    ({"com.docker.network.endpoint.exposedports": [{"Proto": 6, "Port": "80"}]},
     r"\[0\]\.Port: "),
])
def test_port_options_of_the_wrong_type_are_refused_and_named(options, needle):
    with pytest.raises(errors.InvalidInput, match=needle):
        spec.check_port_options(options)


def test_sctp_is_only_refused_when_published():
    """A syntax check: whether sctp can be published is the handler's business."""
    options = {"com.docker.network.portmap": [{"Proto": 132, "Port": 80}]}
    spec.check_port_options(options)
    with pytest.raises(errors.InvalidInput, match="sctp"):
        spec.published_ports(options)

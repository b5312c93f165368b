import pytest

from kuryr.neutron import marks

DOCKER_ID = "26e45bc58ff26d47cdbc5ee5be1d22413477ae8572d3cdd417929d05f0fdf549"


def test_network_tags_split_the_docker_id_like_kuryr_libnetwork():
    low, high = marks.network_tags(DOCKER_ID)
    assert low == "kuryr.net.uuid.lh:26e45bc58ff26d47cdbc5ee5be1d2241"
    assert high == "kuryr.net.uuid.uh:3477ae8572d3cdd417929d05f0fdf549"
    assert all(len(tag) <= 60 for tag in (low, high))  # Neutron's tag limit
    assert marks.docker_network_id_from_tags(["other", high, low]) == DOCKER_ID
    assert marks.docker_network_id_from_tags([low]) is None


@pytest.mark.parametrize(("cidr", "sub", "token"), [
    ("10.1.0.0/16", "", "0123456789ab"), ("10.1.0.0/16", "10.1.5.0/24", "0123456789ab"),
    ("fd00:1::/64", "", "ffffffffffff"), ("fd00:1::/64", "fd00:1::/80", "0123456789ab"),
    ("10.1.0.0/16", "", ""), ("10.1.0.0/16", "10.1.5.0/24", "")])
def test_pool_id_round_trip(cidr, sub, token):
    pool = marks.PoolId(cidr, sub, token)
    assert marks.parse_pool_id(str(pool)) == pool


def test_pool_ids_of_earlier_versions_parse():
    assert marks.parse_pool_id("kuryr:10.1.0.0/16|10.1.5.0/24") == marks.PoolId(
        "10.1.0.0/16", "10.1.5.0/24")


@pytest.mark.parametrize("bad", ["", "probe-pool-1", "kuryr:not-a-cidr", "kuryr:10.0.0.0/8|x",
                                 "kuryr:10.0.0.0/8||nothex", "kuryr:10.0.0.0/8|||"])
def test_foreign_pool_ids_are_rejected(bad):
    with pytest.raises(ValueError,
                       match=r"not issued by Kuryr|does not appear to be an IP|malformed"):
        marks.parse_pool_id(bad)


# -- the host tag -------------------------------------------------------------------------------

def test_host_tag_carries_a_name_that_fits():
    assert marks.host_tag("node-7") == "kuryr.host:node-7"
    name = "n" * (marks.TAG_MAX - len(marks.HOST_TAG))
    assert marks.host_tag(name) == marks.HOST_TAG + name


def test_hosts_sharing_a_long_prefix_get_different_tags_that_fit():
    prefix = "compute-rack-0042-availability-zone-east-1-cluster-a."
    tags = {marks.host_tag(prefix + tail) for tail in ("1", "2", "example.org", "1" * 80)}
    assert len(tags) == 4
    assert all(len(tag) <= marks.TAG_MAX for tag in tags)
    assert all(tag.startswith(marks.HOST_DIGEST_TAG) for tag in tags)


def test_a_digest_tag_is_stable_and_never_a_plain_one():
    long_name = "x" * 61
    assert marks.host_tag(long_name) == marks.host_tag(long_name)
    assert not marks.host_tag(long_name).startswith(marks.HOST_TAG)
    assert len(marks.host_tag(long_name)) == marks.TAG_MAX

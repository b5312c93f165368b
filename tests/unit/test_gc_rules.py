"""The garbage collector's rules (pure logic): what counts as a leftover of this
host's Kuryr, and what is never touched.  Its reach on the real stack is tested in
tests/integration/test_reliability.py."""

from __future__ import annotations

import datetime
from types import SimpleNamespace

from kuryr.libnetwork import gc
from kuryr.neutron import marks

OLD = "2020-01-01T00:00:00Z"
GRACE = datetime.timedelta(seconds=120)
NOW = datetime.datetime.now(datetime.UTC)  # Neutron's clock, as its Date header says


def port(pid: str, owner: str = marks.DEVICE_OWNER, tags=(), changed: str = OLD):
    return SimpleNamespace(id=pid, device_owner=owner, mac_address="fa:16:3e:00:00:01",
                           tags=list(tags), created_at=changed, updated_at=changed,
                           security_group_ids=[])


def names(pid: str, host: bool = True, container: bool = True) -> set[str]:
    return ({f"tap{pid[:11]}"} if host else set()) | ({f"tc{pid[:11]}"} if container else set())


def test_port_whose_veth_is_gone_is_garbage():
    found = gc._ports([port("aaaaaaaa-1111")], links=set(), grace=GRACE, now=NOW)
    assert [(g.kind, g.name) for g in found] == [("port", "aaaaaaaa-1111")]


def test_port_in_a_container_is_kept():
    p = port("bbbbbbbb-2222")
    assert gc._ports([p], links=names(p.id, container=False), grace=GRACE, now=NOW) == []


def test_port_no_container_took_is_garbage_but_a_free_pooled_one_is_not():
    taken_never = port("cccccccc-3333")
    pooled = port("dddddddd-4444", owner=marks.POOL_DEVICE_OWNER)
    links = names(taken_never.id) | names(pooled.id)
    found = gc._ports([taken_never, pooled], links=links, grace=GRACE, now=NOW)
    assert [g.name for g in found] == [taken_never.id]


def test_young_ports_and_other_owners_are_never_touched():
    now = datetime.datetime.now(datetime.UTC).isoformat()
    young = port("eeeeeeee-5555", changed=now)
    users = port("ffffffff-6666", owner="compute:nova")
    assert gc._ports([young, users], links=set(), grace=GRACE, now=NOW) == []


def test_age_is_measured_on_neutrons_clock_not_this_hosts():
    neutron_now = datetime.datetime(2030, 1, 1, tzinfo=datetime.UTC)
    just_made = port("12121212-9999",
                     changed=(neutron_now - datetime.timedelta(seconds=30)).isoformat())
    # This host's clock may be hours ahead: the port is still 30 s old.
    assert gc._ports([just_made], links=set(), grace=GRACE, now=neutron_now) == []
    later = neutron_now + datetime.timedelta(seconds=200)
    assert len(gc._ports([just_made], links=set(), grace=GRACE, now=later)) == 1


def test_adopted_port_is_only_unbound():
    adopted = port("abababab-7777", tags=[marks.PORT_EXISTING_TAG])
    assert gc._ports([adopted], links=set(), grace=GRACE, now=NOW)[0].kind == "adopted port"


def test_veth_without_port_is_garbage_only_when_it_is_kuryrs():
    kuryr_pair = names("12345678-aaa")
    foreign = {"tap87654321-bb", "x87654321-bb"}  # a tap name without Kuryr's peer
    managed_only = {"tap99999999-cc"}  # container end in a container, OVS says Kuryr's
    found = gc._veths([], kuryr_pair | foreign | managed_only,
                      managed={"tap99999999-cc": "99999999-cccc"})
    assert sorted(g.name for g in found) == ["tap12345678-aa", "tap99999999-cc"]


def test_veth_of_a_known_port_is_kept_and_stale_ovs_port_is_garbage():
    p = port("0f0f0f0f-8888")
    found = gc._veths([p], names(p.id), managed={"tap0f0f0f0f-88": p.id,
                                                 "tap01010101-99": "gone"})
    assert [(g.kind, g.name) for g in found] == [("ovs port", "tap01010101-99")]


def network(docker_id: str, host: str = "h1", adopted: bool = False):
    tags = [*marks.network_tags(docker_id), marks.host_tag(host)]
    if adopted:
        tags.append(marks.existing_network_tag(docker_id))
    return SimpleNamespace(id=f"net-{docker_id[:4]}", tags=tags, created_at=OLD,
                           updated_at=OLD)


def scope_with(networks: list, docker: set[str] | None, trust: bool = False) -> gc.Scope:
    neutron = SimpleNamespace(networks_tagged=lambda tags: list(networks))
    return gc.Scope(neutron=neutron, ovs=None, host="h1", bridge="br-int",
                    docker_networks=lambda: docker, trust_docker=trust)


def test_network_docker_forgot_is_garbage_adopted_one_is_not():
    live, forgotten, adopted = "a" * 64, "b" * 64, "c" * 64
    nets = [network(live), network(forgotten), network(adopted, adopted=True)]
    found = gc._networks(scope_with(nets, {live}), GRACE, NOW)
    assert [g.name for g in found] == ["net-bbbb"]


def test_networks_are_never_judged_on_a_dockerd_that_does_not_know_any_of_ours():
    nets = [network("a" * 64), network("b" * 64)]
    assert gc._networks(scope_with(nets, {"f" * 64}), GRACE, NOW) == []  # another dockerd
    assert gc._networks(scope_with(nets, None), GRACE, NOW) == []  # dockerd unreachable
    # ... unless the operator vouches for docker_uri (kuryr gc --trust-docker)
    assert len(gc._networks(scope_with(nets, {"f" * 64}, trust=True), GRACE, NOW)) == 2


def test_a_pods_port_whose_veth_is_gone_is_only_the_cni_daemons_garbage():
    pod = port("eeeeeeee-5555", owner=marks.K8S_DEVICE_OWNER)
    pooled = port("ffffffff-6666", owner=marks.K8S_POOL_DEVICE_OWNER)
    links = names(pooled.id)
    assert gc._ports([pod, pooled], links=links, grace=GRACE, now=NOW) == []  # Docker's
    found = gc._ports([pod, pooled], links=links, grace=GRACE, now=NOW,
                      owners=marks.K8S_OWNERS)
    assert [(g.kind, g.name) for g in found] == [("port", pod.id)]


def test_hosts_sharing_a_long_name_prefix_never_collect_each_others_networks():
    prefix = "kuryr-aio-compute-host-of-the-same-rack-with-a-long-name-"
    host_a, host_b = prefix + "a", prefix + "b"
    mine, theirs = network("a" * 64, host=host_a), network("b" * 64, host=host_b)

    def networks_tagged(tags):  # Neutron: networks carrying every tag asked for
        return [n for n in (mine, theirs) if set(tags) <= set(n.tags)]

    scope = gc.Scope(neutron=SimpleNamespace(networks_tagged=networks_tagged), ovs=None,
                     host=host_a, bridge="br-int", docker_networks=lambda: {"f" * 64},
                     trust_docker=True)
    # host A's dockerd knows neither network: only A's own may be judged forgotten.
    assert [g.name for g in gc._networks(scope, GRACE, NOW)] == [mine.id]


def test_collection_periods_are_jittered_around_the_interval():
    drawn = []

    def uniform(low: float, high: float) -> float:
        drawn.append((low, high))
        return high

    collector = gc.Collector(scope_with([], set()), interval=60, grace=120, uniform=uniform)
    assert collector.next_period() == 60 * (1 + gc.PERIOD_JITTER)
    assert drawn == [(1 - gc.PERIOD_JITTER, 1 + gc.PERIOD_JITTER)]
    periods = {gc.Collector(scope_with([], set()), 60, 120).next_period() for _ in range(20)}
    assert len(periods) > 1
    assert all(48 <= period <= 72 for period in periods)


def test_a_collected_network_leaves_kuryrs_publishing_router_first():
    """A Docker network forgotten with published containers on it: its subnet is
    still an interface of Kuryr's router, which keeps Neutron from deleting it.
    Another router's interface is not Kuryr's to remove."""
    from kuryr.neutron.types import FixedIP, Port, Router

    calls = []
    interfaces = [
        Port(id="if-kuryr", network_id="n1", mac_address="", device_id="r-kuryr",
             device_owner=gc.ROUTER_INTERFACE_OWNER, fixed_ips=(FixedIP("s1", "10.0.0.1"),)),
        Port(id="if-user", network_id="n1", mac_address="", device_id="r-user",
             device_owner=gc.ROUTER_INTERFACE_OWNER, fixed_ips=(FixedIP("s2", "10.1.0.1"),))]

    def ports(network_id, device_owner=None, **_):
        return interfaces if device_owner == gc.ROUTER_INTERFACE_OWNER else []

    neutron = SimpleNamespace(
        ports=ports, find_router=lambda name: Router(id="r-kuryr", name=name),
        remove_router_interface=lambda router, subnet: calls.append((router, subnet)),
        subnets=lambda network_id: [], delete_network=lambda nid: calls.append(("delete", nid)))
    scope = gc.Scope(neutron=neutron, ovs=None, host="h1", bridge="br-int",
                     publish_router="kuryr-publish")
    gc._remove_network(scope, "n1")
    assert calls == [("r-kuryr", "s1"), ("delete", "n1")]
    calls.clear()
    gc._remove_network(gc.Scope(neutron=neutron, ovs=None, host="h1", bridge="br-int"), "n1")
    assert calls == [("delete", "n1")]  # publishing off: no router is Kuryr's


def test_periodic_passes_ask_neutron_for_this_hosts_groups_only():
    from kuryr.neutron.types import SecurityGroup

    host, other = "node-7", "node-77"
    mine = SecurityGroup("g1", marks.EXPOSE_GROUP_PREFIX + "a",
                         marks.expose_group_description(host), OLD, OLD)
    older_build = SecurityGroup("g2", marks.EXPOSE_GROUP_PREFIX + "b",
                                marks.host_mark(host) + " exposed 80/tcp", OLD, OLD)
    theirs = SecurityGroup("g3", marks.EXPOSE_GROUP_PREFIX + "c",
                           marks.expose_group_description(other), OLD, OLD)
    asked = []

    def security_groups(fields=None, description=None):
        asked.append(description)
        return [g for g in (mine, older_build, theirs)
                if description is None or g.description == description]

    neutron = SimpleNamespace(security_groups=security_groups)
    scope = gc.Scope(neutron=neutron, ovs=None, host=host, bridge="br-int")
    # At start and in `kuryr gc`: every group, an older build's too.
    assert [g.name for g in gc._security_groups(scope, [], GRACE, NOW)] == ["g1", "g2"]
    periodic = gc.Collector(scope, 60, 120).scope
    assert [g.name for g in gc._security_groups(periodic, [], GRACE, NOW)] == ["g1"]
    assert asked == [None, marks.expose_group_description(host)]


def test_expose_group_descriptions_fit_and_differ_per_host():
    long_a, long_b = "a" * 250, "a" * 249 + "b"
    assert marks.expose_group_description("node-7").startswith(marks.host_mark("node-7"))
    assert len(marks.expose_group_description(long_a)) <= marks.DESCRIPTION_MAX
    assert marks.expose_group_description(long_a) != marks.expose_group_description(long_b)

"""kuryr-bench --hosts: the pure parts (access log lines, /proc readings,
Kuryr's refill lines, summaries, ratios across phases, the derived model, the
table) and its place among kuryr-bench's options."""

from __future__ import annotations

import json

import pytest

from kuryr.bench import hosts, run

ACCESS = [
    ('127.0.0.1 - - [01/Dec/2026:13:03:51 +0000] "GET /v2.0/ports?binding%3Ahost_id=bh1 '
     'HTTP/1.1" 200 635 "-" "openstacksdk/4.22.0"'),
    '127.0.0.1 - - [01/Dec/2026:13:03:51 +0000] "PUT /v2.0/ports/7c1e HTTP/1.1" 200 1200 "-" "x"',
    '127.0.0.1 - - [01/Dec/2026:13:03:52 +0000] "PUT /v2.0/ports/8d2f HTTP/1.1" 200 1100 "-" "x"',
    '127.0.0.1 - - [01/Dec/2026:13:03:56 +0000] "GET / HTTP/1.1" 200 118 "-" "x"',
    '127.0.0.1 - - [01/Dec/2026:13:03:57 +0000] "DELETE /v2.0/ports/1 HTTP/1.1" 204 - "-" "x"',
    "not an access line",
]


def test_access_lines_give_method_resource_status_and_bytes():
    requests = hosts.parse_access(ACCESS)
    assert [r.kind for r in requests] == ["GET ports", "PUT ports", "PUT ports", "GET /",
                                          "DELETE ports"]
    assert requests[0].size == 635
    assert requests[-1] == hosts.Request("DELETE", "/v2.0/ports/1", 204, 0)
    assert hosts.Request("GET", "/v2.0/security-groups?fields=id", 200, 1).resource == \
        "security-groups"


def test_kinds_are_counted_most_first():
    assert list(hosts.kinds(hosts.parse_access(ACCESS)).items()) == [
        ("PUT ports", 2), ("DELETE ports", 1), ("GET /", 1), ("GET ports", 1)]
    assert hosts.kinds([]) == {}


STAT = ("1234 (gunicorn: worker [x]) S 1200 1234 1234 0 -1 4194560 100 0 0 0 "
        "250 50 30 20 20 0 3 0 100 0 0")


def test_cpu_of_a_process_counts_its_reaped_children_and_survives_odd_names():
    # utime 250 + stime 50 + cutime 30 + cstime 20 ticks at 100 Hz
    assert hosts.cpu_of_stat(STAT, 100) == pytest.approx(3.5)
    assert hosts.ppid_of_stat(STAT) == 1200


def test_descendants_follow_the_whole_tree():
    parents = {1: 0, 10: 1, 11: 10, 12: 10, 13: 11, 20: 1}
    assert hosts.descendants(10, parents) == {10, 11, 12, 13}
    assert hosts.descendants(99, parents) == {99}


def test_cpu_meter_reads_groups_from_pidfiles(tmp_path):
    proc = tmp_path / "proc"
    for pid, ppid, ticks in ((100, 1, 100), (101, 100, 50), (200, 1, 7)):
        (proc / str(pid)).mkdir(parents=True)
        (proc / str(pid) / "stat").write_text(
            f"{pid} (p) S {ppid} 0 0 0 0 0 0 0 0 0 {ticks} 0 0 0 0 0 0 0 0 0 0")
    (proc / "self").mkdir()
    (tmp_path / "a.pid").write_text("100\n")
    (tmp_path / "gone.pid").write_text("999\n")
    meter = hosts.CpuMeter(proc)
    meter.tick = 100
    meter.add("a", tmp_path / "a.pid")
    meter.add("gone", tmp_path / "gone.pid")
    meter.add("none", None)
    assert meter.read() == {"a": pytest.approx(1.5)}
    meter.remove("a")
    assert meter.read() == {}


def test_spent_is_never_negative_and_new_groups_start_at_zero():
    assert hosts.spent({"a": 1.0, "b": 5.0}, {"a": 1.25, "b": 2.0, "c": 9.0}) == {
        "a": 0.25, "b": 0.0, "c": 0.0}


def test_summary_is_median_min_max():
    assert hosts.summary([3, 1, 2]) == {"median": 2, "min": 1, "max": 3, "n": 3}
    assert hosts.summary([1, 2]) == {"median": 1.5, "min": 1, "max": 2, "n": 2}
    assert hosts.summary([])["median"] is None


def test_refill_lines_of_kuryrs_pool():
    lines = [("2026-12-01 13:10:44,465 INFO kuryr.core.pool: network 4bf3-1: 10 ports made "
              "ready for the pool in 4.43 s (bulk create 3.91 s), 0 requests were waiting"),
             "2026-12-01 13:10:45,000 INFO kuryr.core.pool: something else"]
    assert hosts.parse_refills(lines) == [{"network": "4bf3-1", "ports": 10, "total_s": 4.43,
                                           "bulk_create_s": 3.91, "waiting": 0}]


def cycle(requests, kuryr=0.04, api=0.3, ok=True, others=None):
    cpu = {"kuryr:own": kuryr, "neutron-api": api, "mariadb": 0.05, "ovn-northd": 0.02,
           "ovsdb-nb": 0.0, "ovsdb-sb": 0.01, "ovn-controller:own": 0.06}
    if others is not None:
        cpu["ovn-controller:others-each"] = others
    return {"ok": ok, "requests": requests, "kinds": {"PUT ports": requests},
            "run_ms": 500, "rm_ms": 200, "window_s": 3.0, "cpu": cpu}


def test_cycles_summary_medians_counts_and_cpu_averaged_over_the_cycles():
    out = hosts.cycles_summary([cycle(2), cycle(2, kuryr=0.08), cycle(5, api=0.6),
                                cycle(0, ok=False)])
    assert out["cycles"] == 4
    assert out["failures"] == 1
    assert out["neutron_requests"] == {"median": 2, "min": 2, "max": 5, "n": 3}
    assert out["kinds_per_cycle"] == {"PUT ports": 3.0}
    assert out["window_s"]["median"] == 3
    assert out["cpu_s_per_cycle"]["kuryr:own"] == pytest.approx(0.0533, abs=1e-4)
    assert out["cpu_s_per_cycle"]["neutron-api"] == pytest.approx(0.4)
    assert out["neutron_api_cpu_s_per_request"] == pytest.approx(1.2 / 9, abs=1e-4)
    empty = hosts.cycles_summary([cycle(1, ok=False)])
    assert empty["cpu_s_per_cycle"] == {}
    assert empty["neutron_api_cpu_s_per_request"] is None


def phase(k, requests=2, api=0.3, gc_ms=(10.0, 5.0, 2.0), wall=2.0, others=None):
    rows = {f"bh{i}": hosts.cycles_summary([cycle(requests, api=api, others=others)] * 4)
            for i in range(1, k + 1)}
    out = {"hosts_up": k, "hosts": rows,
           "gc_listing": {f"bh{i}": {"ports": {"median_ms": gc_ms[0]},
                                     "security_groups": {"median_ms": gc_ms[1]},
                                     "networks": {"median_ms": gc_ms[2]},
                                     "requests_per_pass": 3,
                                     "neutron_api_cpu_s_per_pass": 0.1}
                          for i in range(1, k + 1)},
           "burst": {"size": 5 * k, "wall_s": wall, "succeeded": 5 * k}}
    out["pooled"] = hosts.pooled(out)
    return out


def test_pooled_figures_weigh_hosts_by_their_cycles():
    pool = phase(2, others=0.02)["pooled"]
    assert pool["neutron_requests_median"] == 2
    assert pool["neutron_requests_min"] == 2
    assert pool["neutron_api_cpu_s"] == pytest.approx(0.3)
    assert pool["ovn_central_cpu_s"] == pytest.approx(0.03)
    assert pool["ovn_controller_each_other_cpu_s"] == pytest.approx(0.02)
    assert pool["hosts"] == 2
    assert hosts.pooled({"hosts": {}}) == {}


def test_gc_total_is_the_sum_of_the_listings():
    assert hosts.gc_total_ms(phase(1)["gc_listing"]["bh1"]) == 17.0
    assert hosts.gc_total_ms({"ports": {"median_ms": None}}) is None
    assert hosts.gc_total_ms({}) is None


def test_ratios_are_each_phase_over_the_first_and_the_listing_growth():
    result = {"phases": [phase(1), phase(2, api=0.6, gc_ms=(20.0, 10.0, 4.0), wall=3.0),
                         phase(3, requests=3)],
              "gc_growth": {"baseline": {"ports": {"median_ms": 10.0},
                                         "security_groups": {"median_ms": 4.0}},
                            "other_hosts_ports": {"ports": {"median_ms": 12.0},
                                                  "security_groups": {"median_ms": 4.0}},
                            "security_groups": {"ports": {"median_ms": None},
                                                "security_groups": {"median_ms": 8.0}}}}
    out = hosts.ratios(result)
    assert out["neutron_api_cpu_s_per_cycle[2_hosts/1]"] == 2.0
    assert out["gc_listing_ms[2_hosts/1]"] == 2.0
    assert out["burst_wall_per_container[2_hosts/1]"] == 0.75
    assert out["neutron_requests_median_per_cycle[3_hosts/1]"] == 1.5
    assert out["gc_ports_ms[+other_hosts_ports/baseline]"] == 1.2
    assert out["gc_security_groups_ms[+security_groups/baseline]"] == 2.0
    assert "gc_ports_ms[+security_groups/baseline]" not in out
    assert hosts.ratios({}) == {}


def test_the_model_scales_the_measured_costs():
    model = hosts.Model(requests_per_container=2, neutron_api_cpu_per_container=0.2,
                        mariadb_cpu_per_container=0.05, ovn_central_cpu_per_container=0.02,
                        ovn_controller_own_cpu_per_container=0.06,
                        ovn_controller_other_cpu_per_container=0.01,
                        kuryr_cpu_per_container=0.04, gc_requests_per_pass=3,
                        gc_neutron_cpu_per_pass=0.1)
    out = model.at(100, 60, interval=300)
    assert out["containers_per_s"] == 100
    assert out["neutron_requests_per_s"] == 200
    assert out["gc_requests_per_s"] == 1.0
    assert out["gc_requests_in_one_synchronized_round"] == 300
    assert out["neutron_api_cores"] == pytest.approx(20 + 100 / 300 * 0.1, abs=0.01)
    assert out["ovn_controller_cores_per_host_one_shared_network"] == pytest.approx(
        0.06 + 99 * 0.01)
    assert out["kuryr_cores_per_host"] == 0.04
    assert model.at(1, 60, interval=0)["gc_requests_per_s"] == 0
    assert model.saturation() == {"neutron_api": 5.0, "mariadb": 20.0, "ovn_central": 50.0}


def test_derive_uses_the_last_phase_and_says_nothing_without_figures():
    derived = hosts.derive({"phases": [phase(1), phase(2, api=0.5)]}, scenarios=[(10, 6)])
    assert derived["inputs"]["neutron_api_cpu_per_container"] == pytest.approx(0.5)
    assert derived["inputs"]["gc_listing_ms_per_pass"] == 17.0
    assert derived["scenarios"][0]["containers_per_s"] == 1.0
    assert derived["saturation_containers_per_s"]["neutron_api"] == 2.0
    assert hosts.derive({}) == {}


def test_table_lists_every_phase_host_and_the_ratios():
    result = {"phases": [phase(1), phase(2)],
              "gc_command": {"bh1": {"neutron_requests": 4, "kinds": {"GET ports": 1},
                                     "wall_s": 1.5}},
              "refill": {"bh1": {"bulk_posts": 1}}}
    result["ratios"] = hosts.ratios(result)
    result["phases"][1]["idle"] = {"seconds": 10.0, "cpu_s_per_s": {"kuryr:bh1": 0.002,
                                                                      "mariadb": 0.0},
                                   "neutron_requests_of_others": 3}
    text = hosts.table(result)
    assert " 2 host(s) up:" in text
    assert "idle 10.0 s, CPU s per s: kuryr:bh1 0.002; others' Neutron requests 3" in text
    assert sum(1 for line in text.splitlines() if line.strip().startswith("bh2")) == 1
    assert "kuryr gc --dry-run on bh1: 4 requests" in text
    assert json.dumps(result["ratios"]) in text


def test_access_log_is_read_from_an_offset(tmp_path):
    path = tmp_path / "access.log"
    path.write_text(ACCESS[0] + "\n")
    log = hosts.AccessLog(path)
    offset = log.mark()
    with path.open("a") as fh:
        fh.write(ACCESS[1] + "\n" + ACCESS[2] + "\n")
    assert [r.kind for r in log.since(offset)] == ["PUT ports", "PUT ports"]
    assert hosts.AccessLog(tmp_path / "missing").mark() == 0


def test_only_one_run_at_a_time(tmp_path):
    with hosts.exclusive(tmp_path / "lock"), pytest.raises(hosts.StackError), \
            hosts.exclusive(tmp_path / "lock"):
        pass


def test_hosts_is_an_option_of_kuryr_bench(monkeypatch):
    seen = {}
    monkeypatch.setattr(hosts, "main", lambda args: seen.setdefault("args", args) and 0)
    assert run.main(["--hosts", "3", "--quick", "--json", "x.json"]) == 0
    args = seen["args"]
    assert (args.hosts, args.quick, args.json) == (3, True, "x.json")
    for bad in (["--hosts", "0"], ["--hosts", "9"], ["--hosts", "x"],
                ["--hosts", "2", "--nested"], ["--hosts", "2", "--k8s"]):
        with pytest.raises(SystemExit):
            run.main(bad)


def test_listing_time_per_port_is_the_unfiltered_listings_extra_over_its_extra_ports():
    listing = {"ports_unfiltered": {"median_ms": 110.0},
               "ports": {"median_ms": 10.0, "items": 4}}
    assert hosts.listing_ms_per_port(listing, 104) == 1.0
    assert hosts.listing_ms_per_port(listing, 4) is None  # nothing but its own
    assert hosts.listing_ms_per_port(listing, None) is None
    assert hosts.listing_ms_per_port({"ports": {"median_ms": 5.0}}, 10) is None


def test_the_unfiltered_gc_listing_grows_with_every_hosts_ports():
    model = hosts.Model(requests_per_container=2, neutron_api_cpu_per_container=0.2,
                        mariadb_cpu_per_container=0.0, ovn_central_cpu_per_container=0.0,
                        ovn_controller_own_cpu_per_container=0.0,
                        ovn_controller_other_cpu_per_container=0.0,
                        kuryr_cpu_per_container=0.0, listing_ms_per_port=1.0,
                        filtered_ports_listing_ms=10.0)
    small, large = model.at(10, 1, ports_per_host=20), model.at(100, 1, ports_per_host=20)
    assert small["gc_ports_listing_s_per_pass_unfiltered"] == pytest.approx(0.21)
    assert large["gc_ports_listing_s_per_pass_unfiltered"] == pytest.approx(2.01)
    assert large["gc_ports_listing_s_per_pass_filtered"] == pytest.approx(0.03)
    # passes/s x seconds per pass: quadratic in hosts unfiltered, linear filtered
    assert large["gc_ports_listing_neutron_cores_unfiltered"] == pytest.approx(100 / 300 * 2.01,
                                                                                abs=1e-3)
    assert large["gc_ports_listing_neutron_cores_filtered"] == pytest.approx(100 / 300 * 0.03,
                                                                              abs=1e-4)


def test_derive_takes_the_per_port_listing_time_from_the_last_phase():
    last = phase(2)
    last["neutron_ports_total"] = 54
    for row in last["gc_listing"].values():
        row["ports_unfiltered"] = {"median_ms": 60.0}
        row["ports"] = {"median_ms": 10.0, "items": 4}
    inputs = hosts.derive({"phases": [phase(1), last]})["inputs"]
    assert inputs["listing_ms_per_port"] == 1.0
    assert inputs["filtered_ports_listing_ms"] == 10.0

"""kuryr-bench --nested: the pure parts (exports, which Docker networks hold
kuryr-aio-vms, the reach probe's output, summaries, ratios, the table)."""

from __future__ import annotations

import json

import pytest

from kuryr.bench import nested, run


def test_exports_as_kuryr_aio_prints_them():
    text = ("export DOCKER_HOST=unix:///run/kuryr-aio/vms/bv/docker.sock\n"
            "export KURYR_VM_EXEC='/work/main/.venv/bin/python -m kuryr.aio.vm_exec run bv'\n"
            "export EMPTY=\n"
            "# a comment\nnot an export\n")
    assert nested.parse_exports(text) == {
        "DOCKER_HOST": "unix:///run/kuryr-aio/vms/bv/docker.sock",
        "KURYR_VM_EXEC": "/work/main/.venv/bin/python -m kuryr.aio.vm_exec run bv",
        "EMPTY": ""}


def test_other_docker_networks_on_the_vms_network_are_found_by_name_or_id():
    inspected = [
        {"Name": "vms", "Options": {"neutron.net.name": "kuryr-aio-vms"}},
        {"Name": "byid", "Options": {"neutron.net.uuid": "net-1"}},
        {"Name": "bench-nested-abc123", "Options": {"neutron.net.name": "kuryr-aio-vms"}},
        {"Name": "other", "Options": {"neutron.net.name": "elsewhere"}},
        {"Name": "plain", "Options": None}]
    assert nested.adopters(inspected, "kuryr-aio-vms", "net-1") == ["vms", "byid"]
    assert nested.adopters(inspected, "kuryr-aio-vms") == ["vms"]
    assert nested.adopters([], "kuryr-aio-vms") == []


def test_reach_probe_output_gives_seconds_from_the_start_and_failed_pings():
    assert nested.parse_reach("5103.49 7244.65\n0\n", 5103.24) == (pytest.approx(0.25), 0)
    assert nested.parse_reach("Some line\n200.5 3.0\n3\n", 199.0) == (1.5, 3)
    # Clock granularity (10 ms) never makes it negative.
    assert nested.parse_reach("10.00 1\n0\n", 10.004) == (0.0, 0)


@pytest.mark.parametrize("logs", ["", "0\n", "not a number\n0\n", "1.0 2.0\nx\n"])
def test_a_probe_that_never_got_an_answer_has_no_reach(logs):
    assert nested.parse_reach(logs, 1.0) is None


def test_the_probe_pings_the_address_until_answered():
    script = nested.reach_script("192.168.250.7", attempts=5)
    assert "ping -c 1 -W 1 192.168.250.7" in script
    assert "[ $n -ge 5 ] && exit 1" in script
    assert script.endswith("cat /proc/uptime; echo $n")


def test_uptime_is_the_first_field():
    assert nested.uptime("5038.41 7144.74\n") == 5038.41


def test_latency_is_median_and_nearest_rank_p95_in_ms():
    times = [0.1 * i for i in range(1, 11)]  # 0.1 .. 1.0 s
    assert nested.latency(times, 1) == {"median": 550, "p95": 1000, "runs": 10,
                                        "failures": 1}
    assert nested.latency([], 3) == {"runs": 0, "failures": 3}


def test_counts_are_median_and_minimum():
    assert nested.counts([7, 5, 30]) == {"median": 7, "min": 5, "samples": [7, 5, 30]}
    assert nested.counts([4, 5]) == {"median": 4.5, "min": 4, "samples": [4, 5]}
    assert nested.counts([])["median"] is None


def test_reach_summary_counts_first_ping_answers_and_failures():
    out = nested.reach([(0.5, 0), (1.5, 1), None, (0.7, 0)])
    assert out == {"runs": 4, "failures": 1, "first_ping_answered": "2/4",
                   "median": 700, "p95": 1500}
    assert nested.reach([None]) == {"runs": 1, "failures": 1, "first_ping_answered": "0/1"}


def result():
    return {
        "docker_run_ms": {"host": {"median": 400, "p95": 500},
                          "nested-vlan": {"median": 600, "p95": 1000},
                          "nested-macvlan": {"median": 500, "p95": None}},
        "neutron_requests_per_run": {"host": {"median": 2}, "nested-vlan": {"median": 5},
                                     "nested-macvlan": {"median": 3}},
        "burst": {"host": {"wall_s": 2.0, "p95_ms": 1800},
                  "nested-vlan": {"wall_s": 5.0, "p95_ms": 4500},
                  "nested-macvlan": {"wall_s": 3.0, "p95_ms": None}},
        "time_to_reach_ms": {"host": {"median": 0}, "nested-vlan": {"median": 900},
                             "nested-macvlan": {"median": 1200}}}


def test_ratios_are_nested_over_host_and_skip_what_is_missing():
    assert nested.ratios(result()) == {
        "docker_run_median_over_host[nested-vlan]": 1.5,
        "docker_run_median_over_host[nested-macvlan]": 1.25,
        "docker_run_p95_over_host[nested-vlan]": 2.0,
        "neutron_requests_over_host[nested-vlan]": 2.5,
        "neutron_requests_over_host[nested-macvlan]": 1.5,
        "burst_wall_over_host[nested-vlan]": 2.5,
        "burst_wall_over_host[nested-macvlan]": 1.5,
        "burst_p95_over_host[nested-vlan]": 2.5,
        # A host median of 0 ms (below the clock's 10 ms) is no baseline.
    }
    assert nested.ratios({}) == {}


def test_table_has_a_column_per_place_and_the_ratios():
    figures = result()
    figures["ratios"] = nested.ratios(figures)
    text = nested.table(figures)
    header = next(line for line in text.splitlines() if "nested-vlan" in line)
    assert header.split() == ["host", "nested-vlan", "nested-macvlan"]
    median = next(line for line in text.splitlines() if "median ms" in line)
    assert median.split()[-3:] == ["400", "600", "500"]
    assert json.dumps(figures["ratios"]) in text


def test_nested_is_an_option_of_kuryr_bench(monkeypatch):
    seen = {}
    monkeypatch.setattr(nested, "main", lambda args: seen.setdefault("args", args) and 0)
    assert run.main(["--nested", "--quick", "--json", "x.json"]) == 0
    args = seen["args"]
    assert (args.nested, args.quick, args.json) == (True, True, "x.json")
    with pytest.raises(SystemExit):
        run.main(["--nested", "--k8s"])

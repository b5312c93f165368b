"""kuryr-bench's headline ratios (pure arithmetic over a result dict)."""

from __future__ import annotations

from kuryr.bench.run import percentile, ratios


def result(**burst):
    return {"docker_run_ms": {"kuryr": {"median": 800}, "bridge": {"median": 500},
                              "bridge (user-defined)": {"median": 640},
                              "kuryr-libnetwork": {"median": 4000}},
            "burst": burst}


def test_latency_ratios_against_both_bridges_and_the_peer():
    out = ratios(result())
    assert out == {"kuryr_over_bridge": 1.6, "kuryr_over_user_defined_bridge": 1.25,
                   "kuryr_libnetwork_over_kuryr": 5.0}


def test_burst_p95_is_compared_with_a_single_start_of_the_same_kind():
    out = ratios(result(**{
        "kuryr": [{"size": 20, "succeeded": 20, "p95_ms": 4000}],
        "kuryr (pool 50)": [{"size": 50, "succeeded": 50, "p95_ms": 2000}],
        "bridge (user-defined)": [{"size": 50, "succeeded": 50, "p95_ms": 1920}],
        "kuryr-libnetwork": [{"size": 20, "succeeded": 20, "p95_ms": 40000}],
    }))
    assert out["burst_20_p95_over_single[kuryr]"] == 5.0
    assert out["burst_50_p95_over_single[kuryr (pool 50)]"] == 2.5
    assert out["burst_50_p95_over_single[bridge (user-defined)]"] == 3.0
    assert not any("kuryr-libnetwork]" in key for key in out)


def test_a_burst_with_failures_gets_no_ratio():
    out = ratios(result(kuryr=[{"size": 50, "succeeded": 49, "p95_ms": 1000}]))
    assert not any(key.startswith("burst_") for key in out)


def test_percentile_picks_the_nearest_rank():
    assert percentile([5, 1, 4, 2, 3], 0.95) == 5
    assert percentile([5, 1, 4, 2, 3], 0.5) == 3


def test_handler_time_per_container_sums_what_kuryr_logged():
    from kuryr.bench.run import handler_ms

    lines = [
        ("2026-11-30 10:00:00,001 INFO kuryr.libnetwork.app: NetworkDriver.CreateEndpoint: "
        "0 Neutron requests {} in 4 ms"),
        ("2026-11-30 10:00:00,002 INFO kuryr.libnetwork.app: NetworkDriver.Join: "
        "0 Neutron requests {} in 3 ms"),
        ("2026-11-30 10:00:00,003 INFO kuryr.core.background: background record endpoint: "
        "1 Neutron requests {'PUT': 1} in 300 ms"),  # not a handler: not counted
        ("2026-11-30 10:00:01,001 INFO kuryr.libnetwork.app: NetworkDriver.CreateEndpoint: "
        "1 Neutron requests {'POST': 1} in 6 ms"),
    ]
    assert handler_ms(lines, 2) == {
        "total": 6.5, "by_call": {"NetworkDriver.CreateEndpoint": 5.0, "NetworkDriver.Join": 1.5}}

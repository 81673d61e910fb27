"""bench/elastic.py: its verdict on the elastic run's accuracy (its reclaim runs in tests/cluster's
elastic test, its reader of Ray's checkpoint snapshot in tests/train/test_main.py)."""


def test_the_elastic_run_passes_within_the_fixed_runs_range_ends_included(bench_script):
    within = bench_script("elastic").within
    assert within(0.95, [0.9, 1.0]) and within(1.0, [1.0, 1.0]) and within(0.9, [0.95, 0.9])
    assert not within(0.85, [0.9, 1.0]) and not within(0.99, [0.95, 0.97])

"""bench/two_nodes.py: a run's step time from its logging windows (the cluster run itself is the benchmark's)."""

import pytest


def test_step_time_is_the_median_window_in_seconds_per_step(bench_script):
    step = bench_script("two_nodes").step_seconds
    # windows of 32-clip steps at 160, 320 and 100 clips/s: 0.2, 0.1 and 0.32 s a step
    assert step([160.0, 320.0, 100.0], 32) == pytest.approx(0.2)
    assert step([64.0, 64.0], 16) == pytest.approx(0.25)

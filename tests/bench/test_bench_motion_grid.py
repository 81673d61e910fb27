"""bench/motion_grid.py's other generator, which `make test` no longer trains on (its hardest cell is
synthetic: tests/train/test_motion.py): its squares move as asked, and its folder prepares."""

import numpy as np
import pytest

from pipeline.store import Store


@pytest.mark.parametrize("direction, speed", [("left", 0.5), ("right", 2.0), ("up", 1.0), ("down", 2.0)])
def test_a_square_moves_in_its_direction_at_its_speed(bench_script, direction, speed):
    grid = bench_script("motion_grid")
    frames = 48
    video = grid.square_video(direction, np.random.default_rng(3), size=1 / 8, speed=speed, frames=frames)
    assert video.shape == (frames, 64, 64, 3) and video.dtype == np.uint8
    bright = video.min(axis=3) > 120  # the square: every channel of its colour is >= 150, the noise ~10-40
    full = [i for i, f in enumerate(bright) if f.sum() == 64]  # an 8x8 square wholly in the frame
    assert len(full) >= 8  # at most 16 px of 72 on its loop are at an edge
    centre = {i: np.argwhere(bright[i]).mean(axis=0) for i in full}  # (row, column)
    steps = np.array([centre[i + 1] - centre[i] for i in full if i + 1 in centre])
    dx, dy = grid.DIRECTIONS[direction]
    assert np.allclose(steps.mean(axis=0), (dy * speed, dx * speed), atol=0.35)


def test_a_folder_cell_prepares_into_a_store(ray_cluster, bench_script, tmp_path):
    grid = bench_script("motion_grid")
    url = grid.make_store(tmp_path, "folder", 1 / 8, 1.0, 16, train=2, val=1, seed=0)
    store = Store(url)
    assert sorted(store.classes) == sorted(grid.DIRECTIONS)
    assert store.manifest["splits"]["train"]["videos"] == 8 and store.manifest["splits"]["val"]["videos"] == 4

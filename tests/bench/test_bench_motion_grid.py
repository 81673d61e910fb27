"""bench/motion_grid.py: its own generator's squares move as asked and its folder prepares; one
cheap cell runs through the script (the grid's fits are the bench's: bench/RESULTS.md)."""

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


def test_the_hardest_cell_runs_through_the_script_at_a_tiny_size(ray_cluster, bench_script, tmp_path, capsys):
    grid = bench_script("motion_grid")
    status = grid.main(["--cells", "hardest", "--train", "2", "--val", "1", "--archs", "c2d,c3d", "--jobs", "1",
                        "--set", "trainer.epochs=1", "--set", "optim.warmup_epochs=0.5", "--dir", str(tmp_path)])
    # the table's lines, among prepare's
    out = [line for line in capsys.readouterr().out.splitlines() if line.startswith(("layout", "synthetic", "goal"))]
    assert out[0].split() == ["layout", "size", "px/frame", "frames", "c2d", "c3d", "seconds"]
    row = out[1].split()
    assert row[:4] == ["synthetic", "1/8", "0.5", "32"] and len(row) == 7
    top1 = [float(v.rstrip("!")) for v in row[4:6]]
    assert all(v in (0.0, 0.25, 0.5, 0.75, 1.0) for v in top1)  # 4 test videos
    missed = sum(not grid.passes(a, v) for a, v in zip(["c2d", "c3d"], top1, strict=True))
    assert out[2].endswith(f"{missed} result(s) miss it (marked !)") and status == (1 if missed else 0)

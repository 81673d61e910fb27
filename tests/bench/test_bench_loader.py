"""bench/loader.py runs end to end at tiny sizes and prints each size's rates, ratio and task memory."""

import pytest


@pytest.mark.slow
def test_loader_benchmark_prints_its_table(ray_cluster, tmp_path, capsys, bench_script):
    bench = bench_script("loader")
    assert bench.main(["--sizes", "80x48,64x112", "--videos", "2", "--videos-per-shard", "1", "--short-side", "40",
                       "--crop", "32", "--clips", "48", "--clips-per-video", "2", "--decord-clips", "4",
                       "--gpu-clips-per-s", "100", "--worker-batches", "4", "--dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    rows = {line.split()[0]: [float(x.rstrip("!")) for x in line.split()[1:]]
            for line in out.splitlines() if line.strip().startswith(("80x48", "64x112"))}
    assert set(rows) == {"80x48", "64x112"}
    for bpp, ray, alone, floor, decord, ratio, task, peak in rows.values():
        assert min(bpp, ray, alone, floor, decord, peak) > 0 and 0 <= task < peak
        assert abs(ratio - ray / decord) <= 0.01 + 0.01 * ratio
    assert out.count("CPU cores of (a)") == 2 and "goals: (a) >= 150" in out
    worker = next(line for line in out.splitlines() if line.startswith("a training worker's loader"))
    assert "8 frames" in worker and "32 frames" in worker

"""Decoding: frames match a direct decord decode, broken files get their reason, crashes are contained."""

import signal
import threading

import numpy as np
import psutil
import pytest
import simplejpeg

from pipeline.decode import DecodeError, IsolatedDecoder, encode_video, reusable_decoder, scaled_size
from pipeline.scenes import motion_video
from pipeline.shards import ShardSpec, process_shard
from pipeline.synthetic import SyntheticSpec, generate, write_video

decord = pytest.importorskip("decord")


def test_scaled_size_keeps_aspect_and_never_upsamples():
    assert scaled_size(240, 320, 128) == (128, 171)
    assert scaled_size(640, 360, 320) == (569, 320)
    assert scaled_size(100, 160, 320) == (100, 160)


@pytest.mark.parametrize("frame_step", [1, 3])
def test_frames_match_a_direct_decord_decode(tmp_path, frame_step):
    path = tmp_path / "v.mp4"
    write_video(path, motion_video(0, False, np.random.default_rng(1), 96, 128, 20), fps=12)
    video = encode_video(str(path), frame_step=frame_step, short_side=64, quality=90)
    assert video.indices == list(range(0, 20, frame_step)) and video.num_frames == 20
    assert (video.height, video.width, video.source_height, video.source_width) == (64, 85, 96, 128)
    assert video.fps == pytest.approx(12.0)
    direct = decord.VideoReader(str(path), width=85, height=64).get_batch(video.indices).asnumpy()
    stored = np.stack([simplejpeg.decode_jpeg(j) for j in video.jpegs])
    assert stored.shape == direct.shape == (len(video.indices), 64, 85, 3)
    # JPEG at quality 90 with 4:2:0 chroma: luma at full resolution, colour at half (as in H.264)
    luma = np.abs((stored.astype(float) - direct) @ [0.299, 0.587, 0.114])
    assert luma.mean() < 2.0 and np.percentile(luma, 99) < 16
    pooled = [x[:, :64, :84].reshape(len(x), 32, 2, 42, 2, 3).mean((2, 4)) for x in (stored, direct)]
    assert np.abs(pooled[0] - pooled[1]).mean() < 2.0


@pytest.fixture(scope="module")
def broken(tmp_path_factory):
    root = tmp_path_factory.mktemp("broken")
    generate(SyntheticSpec(classes=2, videos_per_class=1, val_videos_per_class=0, height=32, width=40,
                           frames=16, broken=True, splits=("train",)), root)
    import json

    meta = json.loads((root / "synthetic.json").read_text())
    good = sorted((root / "train").glob("*.mp4"))
    bad = {b["broken"]: str(root / b["path"]) for b in meta["broken"]}
    return [str(p) for p in good if str(p) not in bad.values()], bad


def test_each_broken_file_gets_its_reason(broken):
    good, bad = broken
    with IsolatedDecoder(timeout=60) as dec:
        for kind, path in bad.items():
            with pytest.raises(DecodeError) as err:
                dec.encode_video(path, short_side=320)
            assert err.value.reason == kind, (kind, str(err.value))
        assert len(dec.encode_video(good[0]).jpegs) == 16  # the same child still works


def test_a_file_that_is_not_a_video_gets_our_error_alone(broken, capfd):
    """decord's and FFmpeg's own C++ lines (``video_reader.cc:83: ERROR opening``) stay off the console."""
    _, bad = broken
    with pytest.raises(DecodeError, match="decord cannot open it"):
        encode_video(bad["not_video"])
    assert capfd.readouterr().err == ""


def test_a_crashing_or_hanging_decoder_costs_one_video(broken):
    """The child stopped while it holds a video (SIGSTOP: a decoder stuck) runs into the timeout;
    the child dying of a segfault while it holds one is a crash. Either costs that video alone: a
    fresh child takes the next."""
    good, _ = broken

    def child_of(dec: IsolatedDecoder) -> psutil.Process:
        assert len(dec.encode_video(good[1]).jpegs) == 16  # the child is up
        child = max((p for p in psutil.Process().children() if "spawn_main" in " ".join(p.cmdline())),
                    key=psutil.Process.create_time)  # the newest spawned child: this decoder's
        child.suspend()
        return child

    with IsolatedDecoder(timeout=3) as dec:
        child_of(dec)
        with pytest.raises(DecodeError, match="timeout: no result within 3s"):
            dec.encode_video(good[0])
        assert len(dec.encode_video(good[1]).jpegs) == 16
    with IsolatedDecoder(timeout=60) as dec:
        child = child_of(dec)
        threading.Timer(1.0, lambda: (child.send_signal(signal.SIGSEGV), child.resume())).start()
        with pytest.raises(DecodeError, match=r"crash: the decoder process died \(signal 11\)"):
            dec.encode_video(good[0])
        assert len(dec.encode_video(good[1]).jpegs) == 16  # a fresh child took over


def test_shards_of_one_worker_share_one_decoder_child(broken, tmp_path):
    """A prepare worker runs shard after shard: one child decodes them all (starting one costs
    more than decoding a short video), and a broken video still costs only itself."""
    good, bad = broken

    def shard(i: int, paths: list[str]) -> dict:
        videos = [dict(video_id=f"v{i}{j}", path=p, label="a", label_index=0, split="train")
                  for j, p in enumerate(paths)]
        return process_shard(ShardSpec(split="train", index=i, url=str(tmp_path / f"{i}.parquet"),
                                       quarantine_url=str(tmp_path / f"q{i}.parquet"), videos=videos, timeout=60))

    first = shard(0, good[:1])
    child = reusable_decoder(60)._proc.pid
    second = shard(1, [bad["not_video"], good[1]])
    assert reusable_decoder(60)._proc.pid == child
    assert (first["videos"], second["videos"], second["quarantined"]) == (1, 1, {"not_video": 1})


def test_mp4_cut_before_its_index_is_truncated_not_garbage(tmp_path):
    path = tmp_path / "cut.mp4"
    write_video(path, motion_video(1, False, np.random.default_rng(2), 32, 40, 12), fps=8)  # moov at the end
    path.write_bytes(path.read_bytes()[:-200])
    with IsolatedDecoder(timeout=60) as dec, pytest.raises(DecodeError) as err:
        dec.encode_video(str(path))
    assert err.value.reason == "truncated"


def test_decord_width_48_quirk_is_quarantined_not_stored(tmp_path):
    """decord 0.6.0 hands back 4-channel frames for 48-pixel-wide videos; that must not reach the store."""
    path = tmp_path / "w48.mp4"
    write_video(path, motion_video(0, False, np.random.default_rng(4), 32, 48, 6), fps=8)
    with pytest.raises(DecodeError) as err:
        encode_video(str(path))
    assert err.value.reason == "bad_frames" and "(32, 48, 4)" in err.value.detail

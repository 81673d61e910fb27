"""Decode one video into resized JPEG frames, and do it in a child process that may crash.

    video = encode_video("clip.mp4", frame_step=1, short_side=320, quality=90)
    with IsolatedDecoder(timeout=120) as dec:
        video = dec.encode_video("clip.mp4", frame_step=1, short_side=320, quality=90)

``encode_video`` decodes with decord from a file path (never from bytes in memory: truncated
bytes can crash decord), keeps every ``frame_step``-th frame, scales so that the short side is
``short_side`` (never up: a smaller video keeps its size) and JPEG-encodes each frame.

A video that cannot be used raises ``DecodeError`` whose ``reason`` is one of REASONS. Every
announced frame must decode: decord's frame count can be wrong on broken files, and a video cut
short is quarantined as ``truncated`` rather than stored in part. ``IsolatedDecoder`` runs the
work in a reusable child process, so a decoder segfault (``crash``) or hang (``timeout``) costs
that one video and the next one gets a fresh child. ``reusable_decoder`` keeps one for the whole
process (a prepare worker runs many shards).
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

REASONS = ("missing", "zero_bytes", "not_video", "no_frames", "truncated", "bad_frames", "crash", "timeout")
CHUNK = 32  # frames decoded per decord call: bounds memory for long videos


class DecodeError(Exception):
    def __init__(self, reason: str, detail: str) -> None:
        assert reason in REASONS, reason
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail = reason, detail


def scaled_size(height: int, width: int, short_side: int) -> tuple[int, int]:
    """(H, W) with the short side at ``short_side``, aspect kept; never larger than the input."""
    short = min(height, width)
    if short <= short_side:
        return height, width
    scale = short_side / short
    return (short_side, max(1, round(width * scale))) if height <= width else \
        (max(1, round(height * scale)), short_side)


def _first_line(e: Exception, limit: int = 300) -> str:
    """decord's message without its stack trace, trimmed."""
    return str(e).split("\n")[0][-limit:]


def _open(path: str, **size: int) -> Any:
    import decord

    try:
        with _quiet_stderr():
            return decord.VideoReader(path, ctx=decord.cpu(0), num_threads=1, **size)
    except Exception as e:  # decord raises RuntimeError or its own DECORDError
        text = _first_line(e)
        if "cannot find video stream" in text:
            raise DecodeError("no_frames", f"no video stream ({text})") from e
        if _looks_like_container(path):
            raise DecodeError("truncated",
                              f"a video container whose index or frame data is cut ({text})") from e
        raise DecodeError("not_video", f"decord cannot open it ({text})") from e


@contextlib.contextmanager
def _quiet_stderr() -> Iterator[None]:
    """The process's stderr (fd 2) off for the block: decord and FFmpeg print their own lines there
    from C++ when a file does not open, before the error that the raised DecodeError already says."""
    sys.stderr.flush()
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def _looks_like_container(path: str) -> bool:
    """An MP4/MOV (``ftyp`` box) or Matroska/WebM (EBML magic) header."""
    with open(path, "rb") as f:
        head = f.read(12)
    return head[4:8] == b"ftyp" or head[:4] == b"\x1a\x45\xdf\xa3"


@dataclass
class VideoInfo:
    indices: list[int]  # source frame index of each kept frame
    fps: float
    num_frames: int  # frames in the source video
    height: int  # of the decoded (scaled) frames
    width: int
    source_height: int
    source_width: int


@dataclass
class EncodedVideo(VideoInfo):
    jpegs: list[bytes]  # one JPEG per kept frame


def decode_frames(path: str, *, frame_step: int = 1,
                  short_side: int = 320) -> tuple[VideoInfo, Iterator[np.ndarray]]:
    """The video's info, and its kept frames as chunks of at most CHUNK (n, H, W, 3) uint8 arrays.

    The chunks are decoded as they are consumed; a chunk that does not decode raises
    ``DecodeError('truncated')`` from the iterator.
    """
    if frame_step < 1:
        raise ValueError(f"frame_step must be >= 1, got {frame_step}")
    if not os.path.isfile(path):
        raise DecodeError("missing", f"no file at {path}")
    if os.path.getsize(path) == 0:
        raise DecodeError("zero_bytes", "the file is empty")
    vr = _open(path)
    num = len(vr)
    if num == 0:
        raise DecodeError("no_frames", "the video stream holds no frames")
    fps = float(vr.get_avg_fps())
    try:
        first = vr[0].asnumpy()
    except Exception as e:
        raise DecodeError("truncated", f"frame 0 of {num} does not decode ({_first_line(e, 200)})") from e
    if first.ndim != 3 or first.shape[2] != 3:
        raise DecodeError("bad_frames", f"decord returned frames of shape {first.shape}, not (H, W, 3)")
    src_h, src_w = first.shape[:2]
    out_h, out_w = scaled_size(src_h, src_w, short_side)
    if (out_h, out_w) != (src_h, src_w):
        del vr
        vr = _open(path, height=out_h, width=out_w)
    info = VideoInfo(list(range(0, num, frame_step)), fps, num, out_h, out_w, src_h, src_w)

    def chunks() -> Iterator[np.ndarray]:
        for start in range(0, len(info.indices), CHUNK):
            batch = info.indices[start:start + CHUNK]
            try:
                frames = vr.get_batch(batch).asnumpy()
            except Exception as e:
                raise DecodeError("truncated", f"frames {batch[0]}..{batch[-1]} of {num} announced do not "
                                               f"decode ({_first_line(e, 200)})") from e
            if frames.shape[1:] != (out_h, out_w, 3):
                raise DecodeError("bad_frames", f"decoded frames have shape {frames.shape[1:]}, expected "
                                                f"{(out_h, out_w, 3)}")
            yield frames

    return info, chunks()


def encode_video(path: str, *, frame_step: int = 1, short_side: int = 320, quality: int = 90) -> EncodedVideo:
    """Decode, scale and JPEG-encode chunk by chunk: memory holds one chunk of raw frames."""
    import simplejpeg

    info, chunks = decode_frames(path, frame_step=frame_step, short_side=short_side)
    # 4:2:0 chroma like the H.264 source: 4:4:4 would store chroma detail the video never had, and
    # cost 25% more decode time in every training epoch.
    jpegs = [simplejpeg.encode_jpeg(np.ascontiguousarray(f), quality=quality, colorspace="RGB",
                                    colorsubsampling="420") for chunk in chunks for f in chunk]
    return EncodedVideo(**vars(info), jpegs=jpegs)


def _serve(conn: Any) -> None:
    """Child process loop: receive (path, kwargs), send ('ok', EncodedVideo) or ('error', reason, detail)."""
    while True:
        try:
            request = conn.recv()
        except EOFError:
            return
        if request is None:
            return
        path, kwargs = request
        try:
            conn.send(("ok", encode_video(path, **kwargs)))
        except DecodeError as e:
            conn.send(("error", e.reason, e.detail))
        except Exception as e:  # an unforeseen decoder failure is still this video's problem
            conn.send(("error", "not_video", f"{type(e).__name__}: {str(e)[-300:]}"))


class IsolatedDecoder:
    """``encode_video`` in a reusable child process with a per-video timeout."""

    def __init__(self, timeout: float = 300.0) -> None:
        self.timeout = timeout
        self._ctx = mp.get_context("spawn")  # no inherited threads or decoder state
        self._proc: Any = None
        self._conn: Any = None

    def _start(self) -> None:
        self._conn, child = self._ctx.Pipe()
        self._proc = self._ctx.Process(target=_serve, args=(child,), daemon=True)
        self._proc.start()
        child.close()

    def _kill(self) -> None:
        if self._proc is not None:
            self._proc.kill()
            self._proc.join()
            self._conn.close()
        self._proc = self._conn = None

    def encode_video(self, path: str, **kwargs: Any) -> EncodedVideo:
        if self._proc is None or not self._proc.is_alive():
            self._start()
        try:
            self._conn.send((path, kwargs))
            ready = self._conn.poll(self.timeout)
            reply = self._conn.recv() if ready else None
        except (EOFError, OSError, BrokenPipeError):
            self._proc.join(5)
            code = self._proc.exitcode
            self._kill()
            how = f"signal {-code}" if code is not None and code < 0 else f"exit code {code}"
            raise DecodeError("crash", f"the decoder process died ({how})") from None
        if reply is None:
            self._kill()
            raise DecodeError("timeout", f"no result within {self.timeout:.0f}s")
        if reply[0] == "error":
            raise DecodeError(reply[1], reply[2])
        return reply[1]

    def close(self) -> None:
        if self._proc is not None and self._proc.is_alive():
            try:
                self._conn.send(None)
            except OSError:
                pass
            self._proc.join(5)
        self._kill()

    def __enter__(self) -> IsolatedDecoder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


_reusable: IsolatedDecoder | None = None


def reusable_decoder(timeout: float) -> IsolatedDecoder:
    """This process's IsolatedDecoder, kept from one call to the next. Starting a child costs 0.2-0.4 s
    (spawn re-imports the parent's main module: inside a Ray worker, that is Ray), against ~12 ms to
    decode a 32-frame 64x80 video, so a fresh one per shard dominated small stores. The child ends
    with this process: as a daemon at exit, or on its closed pipe if this process is killed."""
    global _reusable
    if _reusable is None:
        _reusable = IsolatedDecoder(timeout)
    _reusable.timeout = timeout
    return _reusable

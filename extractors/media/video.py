"""Face frames from a video (PyAV) and ``load_faces``, the face entry point.

Two paths give the ``F`` frames of ``extractors.media.decode_common.frame_indices``:

* **exact** (``exact=True``; the only path before issue 15): decode every frame from the
  start up to the last wanted one, convert the wanted ones to full-size RGB, centre-crop and
  resize them with PIL. Videos longer than ``SEEK_THRESHOLD_S`` seek to the keyframe before
  each wanted frame instead. A stream shorter than its header says is counted, then picked.
* **fast** (the default for clips up to ``SEEK_THRESHOLD_S``), decoding less but the same
  frames (docs/DESIGN.md, "Fast video decoding"):

  1. the video packets are demuxed first; their count is ``n`` and their time stamps give
     each packet's display position, so the wanted frames are known before decoding;
  2. packets after the last wanted one (in decode order) are not decoded;
  3. an H.264 packet whose slices all have ``nal_ref_idc == 0`` (a non-reference frame: no
     other frame is predicted from it) is not decoded unless it is itself wanted. Skipping
     it leaves every other decoded frame **bit-identical**;
  4. the wanted frames are converted and resized as on the exact path (full-size RGB,
     centre crop, PIL bilinear), so the fast path returns the **same pixels** as the exact
     one (``tests/extractors/test_decode_fast.py`` checks it, and the embeddings); on both
     paths the RGB conversion reuses one swscale context per thread (``_rgb``: PyAV's
     ``to_ndarray(format=...)`` builds one per frame; same pixels, ~3 ms less per clip);
  5. one decoder thread (frame threads cost ~50 % more CPU per clip here; run decode
     processes for parallelism, as ``avfuse extract`` does).

  Measured and *not* used (``benchmarks/decode_speed.py``), because they move the
  embeddings below cosine 0.999 with a random-init IResNet: skipping the loop filter
  (``skip_loop_filter``; ~10 % less CPU, the error drifts along the P-frame chain) and a
  one-step swscale yuv -> RGB + resize (``fast_resize``; ~2 ms less per clip, up to ~100
  levels apart from PIL's antialiased bilinear on textured frames). Anything unexpected (no
  time stamps, duplicate time stamps, fewer packets than the container declares, as in a
  truncated faststart file, a wanted frame the decoder did not return) falls back to the
  exact path, which then decodes or fails as it always did.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import numpy as np

from extractors.media.common import _check_regular_file, _open_stream, _short, centre_crop_resize, frame_indices
from extractors.media.frames import faces_from_folder
from pipeline.core.errors import DecodeError

SEEK_THRESHOLD_S = 30.0      # videos longer than this are sampled by seeking
#: one-step yuv -> RGB + resize in swscale (off: moves the embeddings, see the module docstring)
FAST_RESIZE = False
FAST_INTERPOLATION = "AREA"
#: skip the H.264 loop filter in the fast path (off: see the module docstring)
SKIP_LOOP_FILTER = False


def load_faces(video_path: str | Path | None = None, frames_dir: str | Path | None = None,
               n_frames: int = 8, size: int | None = 112,
               seek_threshold_s: float = SEEK_THRESHOLD_S, exact: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """``n_frames`` evenly spaced face frames of a clip: ``(uint8 (F,3,size,size), valid bool (F,))``.

    Exactly one source is used: ``video_path`` (mp4, PyAV) if given, else ``frames_dir``
    (a folder of jpgs). Frames are RGB, centre-cropped to a square and resized to
    ``size`` x ``size`` (videos: ``size=None`` keeps the crop at the source side, for a
    resize on the device; frame folders need a size). ``exact``: the reference video path (every frame decoded, PIL
    resize) instead of the fast one (see the module docstring). Missing/empty sources, no
    video stream, corrupt files: ``DecodeError``.
    """
    if n_frames < 1 or (size is not None and size < 1) or (size is None and video_path is None):
        raise ValueError("n_frames and size must be >= 1 (size=None only for a video)")
    if video_path is not None:
        return faces_from_video(str(video_path), n_frames, size, seek_threshold_s=seek_threshold_s, exact=exact)
    if frames_dir is not None:
        return faces_from_folder(str(frames_dir), n_frames, size)
    raise DecodeError("no face source (neither video_path nor frames_dir)",
                      hint="give a video_path or frames_dir in the manifest, or leave the faces out")


def faces_from_video(video_path: str, n_frames: int, size: int, *, seek_threshold_s: float = SEEK_THRESHOLD_S,
                     exact: bool = False, skip_nonref: bool = True, fast_resize: bool | None = None,
                     skip_loop_filter: bool | None = None, threads: int = 1):
    """The frames of one video; the keyword switches exist for the benchmark and the checks."""
    _check_regular_file(video_path, "video file")
    if os.path.getsize(video_path) == 0:
        raise DecodeError("video file is empty (0 bytes)", path=video_path, hint="re-download this file")
    container, stream = _open_stream(video_path, "video")
    try:
        rate = float(stream.average_rate or stream.guessed_rate or 0) or None
        duration = (float(stream.duration * stream.time_base) if stream.duration else
                    (container.duration / 1e6 if container.duration else None))
        n_est = stream.frames or (int(round(duration * rate)) if duration and rate else 0)
        long_clip = bool(duration and rate and n_est and duration > seek_threshold_s)
        try:
            if not exact and not long_clip:
                fast_resize = FAST_RESIZE if fast_resize is None else fast_resize
                slf = SKIP_LOOP_FILTER if skip_loop_filter is None else skip_loop_filter
                res = _fast_frames(container, stream, n_frames, size, skip_nonref, fast_resize, slf, threads)
                if res is not None:
                    return res
                container.close()  # unexpected stream: start again on the exact path
                container, stream = _open_stream(video_path, "video")
            if long_clip:  # the fast path's conversion too, so that both modes agree on long clips
                vframes, valid = _seek_frames(container, stream, n_est, rate, n_frames)
                frames = [_face(f, size, bool(FAST_RESIZE if fast_resize is None else fast_resize) and not exact)
                          for f in vframes]
            else:
                rgb, valid = _sequential_frames(container, stream, n_frames, stream.frames or 0)
                frames = [centre_crop_resize(f, size) for f in rgb]
        except DecodeError as e:
            e.path = e.path or video_path
            raise
        except Exception as e:
            raise DecodeError(f"video decoding failed ({_short(e)})", path=video_path,
                              hint="the file is truncated or corrupt; re-download it") from None
        if not frames:
            raise DecodeError("no video frames decoded", path=video_path, hint="the video stream is empty")
    finally:
        container.close()
    return np.stack(frames), valid


_LOCAL = threading.local()
# a forked decode worker must not reuse its parent's reformatter (shm_ring forks them)
os.register_at_fork(after_in_child=lambda: _LOCAL.__dict__.clear())


def _rgb(frame, **kw) -> np.ndarray:
    """``frame.to_ndarray(format="rgb24", **kw)`` through one swscale context per thread,
    with one swscale thread. PyAV's ``to_ndarray(format=...)`` builds a new reformatter (and
    swscale context, with a slice thread per core) for every frame; reusing one single-threaded
    context gives the same pixels (same conversion parameters) for ~3 CPU-ms less per
    VoxCeleb2 clip (``benchmarks/decode_floor.py``). Single-threaded also because swscale's
    slice threads do not survive ``fork``: a context inherited by a forked worker hangs when it
    is reconfigured (``tests/extractors/media/test_decode_fast.py``)."""
    from av.video.reformatter import VideoReformatter
    r = getattr(_LOCAL, "reformatter", None)
    if r is None:
        r = _LOCAL.reformatter = VideoReformatter()
    return r.reformat(frame, format="rgb24", threads=1, **kw).to_ndarray()


def _face(frame, size: int | None, fast_resize: bool) -> np.ndarray:
    """A decoded ``VideoFrame`` -> uint8 ``(3, size, size)``: one swscale call for square
    frames on the fast path, else full-size RGB + centre crop + PIL resize."""
    if fast_resize and size is not None and frame.width == frame.height:
        a = _rgb(frame, width=size, height=size, interpolation=FAST_INTERPOLATION)
        return np.ascontiguousarray(a.transpose(2, 0, 1))
    return centre_crop_resize(_rgb(frame), size)


# ----------------------------------------------------------------------------- fast path
def _nal_length_size(cc) -> int | None:
    """Bytes of the NAL length prefix of an H.264 stream in AVCC form (mp4), else None."""
    ex = cc.extradata
    if cc.name != "h264" or not ex or len(ex) < 7 or ex[0] != 1:
        return None
    return (ex[4] & 3) + 1


def _is_reference(data: bytes, nal_len: int) -> bool:
    """False only for an access unit whose coded slices have ``nal_ref_idc == 0`` (all
    slices of a picture share it, so the first slice decides)."""
    pos, n = 0, len(data)
    while pos + nal_len < n:
        header = data[pos + nal_len]
        if header & 0x1F in (1, 5):           # coded slice (non-IDR / IDR)
            return bool(header & 0x60)
        pos += nal_len + int.from_bytes(data[pos:pos + nal_len], "big")
    return True                               # no slice found: decode it, to be safe


def _fast_frames(container, stream, n_frames: int, size: int, skip_nonref: bool, fast_resize: bool,
                 skip_loop_filter: bool, threads: int = 1):
    """The fast path (module docstring); None when the stream needs the exact path."""
    cc = stream.codec_context
    if threads > 1:
        cc.thread_type = "FRAME"
    cc.thread_count = threads
    if skip_loop_filter:
        cc.options = {"skip_loop_filter": "all"}
    packets = [p for p in container.demux(stream) if p.size]
    if not packets:
        return None
    pts = [p.pts for p in packets]
    if any(t is None for t in pts) or len(set(pts)) != len(pts):
        return None
    if stream.frames and len(packets) != stream.frames:  # e.g. a truncated faststart file
        return None
    pts = np.asarray(pts, dtype=np.int64)
    order = np.argsort(pts, kind="stable")        # display position -> decode position
    idx, valid = frame_indices(len(packets), n_frames)
    want_pts = pts[order[idx]]
    wanted = set(want_pts.tolist())
    last = int(order[idx].max())
    nal_len = _nal_length_size(cc) if skip_nonref else None
    got: dict[int, np.ndarray] = {}

    def take(frames) -> None:
        for f in frames:
            if f.pts in wanted and f.pts not in got:
                got[f.pts] = _face(f, size, fast_resize)

    for d in range(last + 1):
        p = packets[d]
        if nal_len and int(pts[d]) not in wanted and not _is_reference(bytes(p), nal_len):
            continue
        take(cc.decode(p))
    take(cc.decode(None))
    if len(got) != len(wanted):
        return None
    return np.stack([got[int(t)] for t in want_pts]), valid


# ----------------------------------------------------------------------------- exact path
def _pick(frames, n: int, n_frames: int):
    """From a stream of ``n`` frames, the wanted ones as RGB arrays (stops after the last);
    ``(None, count)`` when the stream holds fewer than the last wanted index."""
    idx, valid = frame_indices(n, n_frames)
    want, last = set(idx.tolist()), int(idx.max())
    got, count = {}, 0
    for i, frame in enumerate(frames):
        count = i + 1
        if i in want:
            got[i] = _rgb(frame)
        if i >= last:
            return [got[j] for j in idx.tolist()], valid
    return None, count


def _sequential_frames(container, stream, n_frames: int, n_hint: int):
    """Decode the (short) clip from the start. With the container's frame count ``n_hint``
    the wanted frames are converted on the fly and decoding stops after the last one. With
    no count, or a stream shorter than announced, a first pass counts the frames and a
    second pass picks them. Returns RGB arrays ``(H, W, 3)`` and the validity mask."""
    if n_hint > 0:
        frames, valid = _pick(container.decode(stream), n_hint, n_frames)
        if frames is not None:
            return frames, valid
        count = valid
    else:
        count = sum(1 for _ in container.decode(stream))
    if count == 0:
        return [], None
    container.seek(0, stream=stream, backward=True, any_frame=False)
    frames, valid = _pick(container.decode(stream), count, n_frames)
    if frames is None:
        raise DecodeError(f"the video stream gave {count} frames, then {valid} on a second pass")
    return frames, valid


def _seek_frames(container, stream, n: int, rate: float, n_frames: int):
    """For each wanted frame index k, seek to the keyframe at or before its timestamp and
    decode forward to the first frame whose pts reaches ``start + k / rate``. Returns the
    ``VideoFrame``s and the validity mask."""
    idx, valid = frame_indices(n, n_frames)
    tb = float(stream.time_base)
    start = stream.start_time or 0
    half = 0.5 / rate / tb
    out, last = [], None
    for k in idx:
        target = start + k / rate / tb
        if last is not None and last.pts is not None and abs(last.pts - target) < half:
            out.append(last)
            continue
        container.seek(int(max(start, target - half)), stream=stream, backward=True, any_frame=False)
        chosen = None
        for frame in container.decode(stream):
            chosen = frame
            if frame.pts is not None and frame.pts >= target - half:
                break
        if chosen is None:
            if not out:
                return [], None
            chosen = last
        out.append(chosen)
        last = chosen
    return out, valid

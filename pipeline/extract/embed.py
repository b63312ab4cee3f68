"""Batched backbone forward passes of extraction (audio utterances + segments, face frames).

Called by ``pipeline.extract.shard.embed_shard``; see its module docstring for the
definitions of the stored arrays. Batching never changes a result beyond float
rounding: audio batches are zero-padded with the true lengths passed to the backbone
(its forward contract), faces are fixed-size images. Everywhere: ``inference_mode``,
channels_last face input (oneDNN is ~13 % faster with it on CPU too). On CUDA: bf16
autocast (``precision="bf16"``), batches filled in place in pinned host buffers
(``staging``) and copied non-blocking; uint8 frames
are normalised on the device, and resized there when handed over at the source size
(``--resize-on device``: ``resize_faces``, torch's antialiased bilinear). On CPU: fp32, at most
``CPU_FACE_IMAGES`` images per face forward.

A batch that raises is retried clip by clip, so one bad clip fails alone; an error of the GPU
itself (``torch.AcceleratorError``) stops the run instead, keeping what was written.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

from extractors.batching import length_batches, pad_stack, segment_plan, tile_to_length
from extractors.windows import centre_window_plan, front_padded, window_samples
from pipeline.extract.staging import host_buffer, to_device

#: cap on padded samples per audio batch, in seconds of audio per clip slot
MAX_SECONDS_PER_SLOT = 20.0
#: face images per forward on CPU: convolutions gain nothing from bigger batches there and
#: lose cache locality (iresnet18, 1 thread: 0.069 s/image at 8 images, 0.107 at 64)
CPU_FACE_IMAGES = 8


@dataclass
class AudioResult:
    clip: np.ndarray            # float32 (n, D)
    segments: np.ndarray        # float32 (n, S, D)
    segment_valid: np.ndarray   # bool (n, S)
    ok: np.ndarray              # bool (n,)
    errors: dict[int, Any] = field(default_factory=dict)


@dataclass
class FaceResult:
    frames: np.ndarray          # float32 (n, F, D)
    frame_valid: np.ndarray     # bool (n, F)
    clip: np.ndarray            # float32 (n, D)
    ok: np.ndarray              # bool (n,)
    errors: dict[int, Any] = field(default_factory=dict)


def _autocast(models):
    import torch
    if models.precision == "bf16":
        dev = "cuda" if models.device.startswith("cuda") else "cpu"
        return torch.autocast(device_type=dev, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def resize_faces(t, size: int):
    """float ``(N, 3, H, H)`` -> ``(N, 3, size, size)``: torch's antialiased bilinear (the filter of
    PIL's ``BILINEAR``, which the CPU path uses), on ``t``'s device; ``t`` itself when ``H == size``."""
    import torch.nn.functional as F
    if t.shape[-1] == size and t.shape[-2] == size:
        return t
    return F.interpolate(t, size=(size, size), mode="bilinear", antialias=True, align_corners=False)


def faces_on_device(clips: Sequence[np.ndarray], size: int, device: str):
    """uint8 ``(F, 3, H, H)`` arrays (H may differ between clips) -> one float ``(n*F, 3, size,
    size)`` tensor in [0, 255] on ``device``, resized there when ``H != size`` (``--resize-on
    device``). One copy per run of clips of the same side."""
    import torch
    out, k = [], 0
    while k < len(clips):
        j = k + 1
        while j < len(clips) and clips[j].shape == clips[k].shape:
            j += 1
        if j == k + 1 and not device.startswith("cuda"):
            t = torch.from_numpy(clips[k])
        else:                                       # one copy, into pinned memory on CUDA (staging)
            arr, t = host_buffer(((j - k) * clips[k].shape[0],) + clips[k].shape[1:], clips[k].dtype, device)
            np.concatenate(clips[k:j], out=arr)
        out.append(resize_faces(to_device(t, device).float(), size))   # float(): a copy, the buffer is free
        k = j
    return out[0] if len(out) == 1 else torch.cat(out)


class Pending:
    """A batch's embeddings (a float tensor whose first axis is the batch) on their way to the host.
    On CUDA the copy is started non-blocking into pinned memory, with an event after it, so the
    next batch can be prepared and launched before this one is waited for (``result``); on the
    CPU they are already there."""

    def __init__(self, emb):
        self.event = None
        if emb.is_cuda:
            import torch
            self.host = emb.to("cpu", non_blocking=True)      # pinned: torch pins a non-blocking D2H target
            # on the stream of emb's own GPU (the current device may be another one with cuda:N), and
            # blocking: the waiting main thread sleeps instead of spinning a core the decode could use
            self.event = torch.cuda.Event(blocking=True)
            self.event.record(torch.cuda.current_stream(emb.device))
        else:
            self.host = emb

    def result(self) -> np.ndarray:
        if self.event is not None:
            self.event.synchronize()
        return self.host.numpy()


def _raise_if_device_broken(e: Exception) -> None:
    """Stop the run on an error of the accelerator itself (illegal address, device-side assert,
    ...: ``torch.AcceleratorError``). CUDA reports such an error asynchronously, possibly at a
    later batch's call, and it usually leaves the device unusable for the process: retrying clip
    by clip would mark every later clip failed and write their shards as done. Out-of-memory and
    errors of one input are not of this kind and are retried clip by clip as before."""
    import torch
    kind = getattr(torch, "AcceleratorError", None)
    if kind is not None and isinstance(e, kind):
        from pipeline.core.errors import BackboneError
        raise BackboneError(f"the GPU reported an error ({str(e).splitlines()[0][:200]}); it leaves the "
                            "device unusable for this run, so extraction stops here and what was written is kept",
                            hint="rerun the same command to resume; `avfuse --debug` shows the traceback, "
                                 "CUDA_LAUNCH_BLOCKING=1 names the failing call") from e


def _run_batches(batches: list[np.ndarray], forward: Callable[[np.ndarray], Pending],
                 owner: Callable[[int], int], errors: dict[int, Any], out: dict[int, np.ndarray],
                 after: Callable[[np.ndarray], None] | None = None) -> None:
    """Run ``forward`` on each batch of item indices; on an exception retry item by item.
    Results go to ``out[item]``; a failing or non-finite item records ``errors[owner(item)]``;
    ``after(batch)`` follows each batch, in order. On CUDA batch k+1 is launched before batch k's
    embeddings are waited for (one batch in flight: the host prepares the next batch while the
    device computes); on the CPU each batch is collected as it comes."""
    def one_by_one(b: np.ndarray) -> list:
        results = []
        for i in b.tolist():
            try:
                results.append((i, forward(np.asarray([i])).result()[0]))
            except Exception as e:
                _raise_if_device_broken(e)
                errors.setdefault(owner(i), e)
        return results

    def collect(b: np.ndarray, pending: Pending | None) -> None:
        results = None
        if pending is not None:
            try:
                results = list(zip(b.tolist(), pending.result()))
            except Exception as e:
                _raise_if_device_broken(e)
                results = None
        for i, e in one_by_one(b) if results is None else results:
            if not np.isfinite(e).all():
                errors.setdefault(owner(i), "non-finite embedding (NaN/Inf) from the backbone")
            out[i] = e
        if after is not None:
            after(b)

    waiting = None
    for b in batches:
        try:
            launched = forward(b)
        except Exception as e:
            _raise_if_device_broken(e)
            launched = None
        if waiting is not None:
            collect(*waiting)
            waiting = None
        if launched is not None and launched.event is not None:
            waiting = (b, launched)      # still on the device: collected once the next batch is launched
        else:
            collect(b, launched)         # on the CPU the forward already ran (its buffers are reused next)
    if waiting is not None:
        collect(*waiting)


def preprocess_waves(models, waves: Sequence[np.ndarray | None], errors: dict[int, Any]) -> list:
    """Each clip's whole wave through the audio weights' preprocessing (``models.audio_preprocess``,
    e.g. ge2e_lstm ``pretrained``'s silence trimming), before segments are cut; a clip it
    raises on is recorded in ``errors`` and left out (None)."""
    pre = models.audio_preprocess
    if pre is None:
        return list(waves)
    out: list = []
    for i, w in enumerate(waves):
        try:
            out.append(None if w is None else pre(w))
        except Exception as e:
            errors[i] = f"audio preprocessing {pre.name}: {type(e).__name__}: {e}"
            out.append(None)
    return out


def embed_audio(models, waves: Sequence[np.ndarray | None], cfg) -> AudioResult:
    """Clip and segment embeddings of ``waves`` (float32 mono at the backbone's rate;
    None = missing/failed), after the weights' preprocessing (:func:`preprocess_waves`)."""
    import torch
    errors: dict[int, Any] = {}
    waves = preprocess_waves(models, waves, errors)
    spec = models.audio_info["spec"]
    sr = int(spec["sample_rate"])
    dim = int(models.audio_info["embedding_dim"])
    n, S = len(waves), cfg.segments
    min_samples = max(1, int(round(cfg.min_segment_seconds * sr)))
    cap = int(MAX_SECONDS_PER_SLOT * sr)

    items: list[np.ndarray] = []       # whole utterances first, then parts
    item_clip: list[int] = []
    whole_item: dict[int, int] = {}
    plans = {}
    centre = getattr(cfg, "segment_windows", "equal") == "centre"   # the DCA authors' windows
    win = window_samples(sr)
    for i, w in enumerate(waves):
        if w is None:
            continue
        plan = segment_plan(len(w), S, min_samples)
        plans[i] = centre_window_plan(len(w), S, win, min_samples) if centre else plan
        w_eff = tile_to_length(w, plan.tiled_length) if plan.tiled_length else w
        whole_item[i] = len(items)
        items.append(w_eff)
        item_clip.append(i)
    n_whole = len(items)
    part_item: dict[tuple[int, int], int] = {}
    for i, plan in plans.items():
        w_eff = front_padded(waves[i], plan.pad_front) if centre else items[whole_item[i]]
        for p, (a, b) in enumerate(plan.parts):
            part_item[(i, p)] = len(items)
            items.append(w_eff[a:b])
            item_clip.append(i)
    lengths = np.asarray([len(x) for x in items], dtype=np.int64)

    def forward(idx: np.ndarray) -> Pending:
        batch = [items[j] for j in idx.tolist()]
        arr, wave = host_buffer((len(batch), max(len(x) for x in batch)), np.float32, models.device)
        _, lens = pad_stack(batch, out=arr)          # filled in place: pinned on CUDA, reused on CPU
        with torch.inference_mode(), _autocast(models):
            emb = models.audio(to_device(wave, models.device), torch.from_numpy(lens))  # checked on the host
            return Pending(emb.float())

    out: dict[int, np.ndarray] = {}
    bs = cfg.batch_size
    whole_batches = length_batches(lengths[:n_whole], bs, bs * cap)
    part_batches = [b + n_whole for b in length_batches(lengths[n_whole:], bs * S, bs * cap)]
    _run_batches(whole_batches + part_batches, forward, lambda j: item_clip[j], errors, out)

    clip = np.zeros((n, dim), np.float32)
    segs = np.zeros((n, S, dim), np.float32)
    valid = np.zeros((n, S), bool)
    ok = np.zeros(n, bool)
    for i, plan in plans.items():
        if i in errors:
            continue
        ok[i] = True
        clip[i] = out[whole_item[i]]
        parts = np.stack([out[part_item[(i, p)]] for p in range(len(plan.parts))])
        segs[i] = parts[plan.slot_part]
        valid[i] = plan.valid
    return AudioResult(clip=clip, segments=segs, segment_valid=valid, ok=ok, errors=errors)


def embed_faces(models, faces: Sequence[np.ndarray | None], valids: Sequence[np.ndarray | None], cfg,
                progress: Callable[[int], None] | None = None) -> FaceResult:
    """Frame and clip embeddings of ``faces`` (uint8 (F,3,crop,crop) each, or (F,3,H,H) resized on the
    device; None = missing/failed).
    ``face/clip`` = float32 mean of the valid frames' embeddings. ``progress(k)`` is called
    with the number of clips done after each batch."""
    import torch
    spec = models.face_info["spec"]
    dim = int(models.face_info["embedding_dim"])
    n, F = len(faces), cfg.frames
    cuda = models.device.startswith("cuda")
    mean = torch.tensor(spec["mean"] or (0.0, 0.0, 0.0), dtype=torch.float32, device=models.device).view(1, 3, 1, 1)
    std = torch.tensor(spec["std"] or (1.0, 1.0, 1.0), dtype=torch.float32, device=models.device).view(1, 3, 1, 1)
    have = [i for i in range(n) if faces[i] is not None]

    crop = int(spec["crop"])

    def forward(idx: np.ndarray) -> Pending:
        with torch.inference_mode():     # (b*F, 3, crop, crop) float; resized here if handed over bigger
            t = faces_on_device([faces[have[j]] for j in idx.tolist()], crop, models.device)
            t = t.div_(255.0).sub_(mean).div_(std)
            t = t.contiguous(memory_format=torch.channels_last)
            with _autocast(models):
                emb = models.face(t)
            return Pending(emb.float().reshape(len(idx), F, -1))

    errors: dict[int, Any] = {}
    out: dict[int, np.ndarray] = {}
    per = cfg.batch_size if cuda else max(1, min(cfg.batch_size, CPU_FACE_IMAGES // F))
    batches = [np.arange(a, min(a + per, len(have))) for a in range(0, len(have), per)]
    def after(b: np.ndarray) -> None:
        if progress is not None:
            progress(len(b))

    _run_batches(batches, forward, lambda j: have[j], errors, out, after=after)
    if progress is not None and n > len(have):
        progress(n - len(have))

    frames = np.zeros((n, F, dim), np.float32)
    fvalid = np.zeros((n, F), bool)
    clip = np.zeros((n, dim), np.float32)
    ok = np.zeros(n, bool)
    for j, i in enumerate(have):
        if i in errors:
            continue
        v = np.asarray(valids[i], bool)
        if not v.any():
            errors[i] = "no valid face frame"
            continue
        ok[i] = True
        frames[i] = out[j]
        fvalid[i] = v
        clip[i] = out[j][v].mean(axis=0, dtype=np.float32)
    return FaceResult(frames=frames, frame_valid=fvalid, clip=clip, ok=ok, errors=errors)

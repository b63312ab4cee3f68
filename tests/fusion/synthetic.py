"""Identity-structured random embeddings for the fusion tests (in-memory, no cache).

Each identity k has an audio prototype p_A[k] (Da) and a face prototype p_V[k] (Dv).
A clip of k has per-step embeddings ``p_m[k] + c * n_clip + s * n_step`` (clip noise
shared by the clip's steps, step noise per step); its clip embedding is the mean of
its valid steps. ``noise`` sets how weak each modality is alone, so fusion can help.
Some clips miss a modality (its vectors all zero, ``has_*`` False), some steps are
invalid (repeat-padded).
"""

from __future__ import annotations

import numpy as np
import torch

from fusion import EmbeddingBatch


def make_arrays(n_ids: int = 12, clips_per_id: int = 10, da: int = 24, dv: int = 32, steps: int = 8,
                noise: float = 1.2, step_noise: float = 0.6, p_missing: float = 0.05,
                seed: int = 0, id_offset: int = 0) -> dict[str, np.ndarray]:
    """numpy arrays named like the cache's (``audio/clip`` ...) plus ``speakers`` and ``ids``."""
    rng = np.random.default_rng(seed)
    n = n_ids * clips_per_id
    lab = np.repeat(np.arange(n_ids), clips_per_id)
    out: dict[str, np.ndarray] = {}
    for m, d in (("audio", da), ("face", dv)):
        proto = rng.standard_normal((n_ids, d)).astype(np.float32)
        seq = (proto[lab][:, None, :] + noise * rng.standard_normal((n, 1, d))
               + step_noise * rng.standard_normal((n, steps, d))).astype(np.float32)
        valid = np.ones((n, steps), dtype=bool)
        short = rng.random(n) < 0.3
        valid[short, steps // 2:] = False
        seq[~valid] = seq[short][:, :1].repeat(steps - steps // 2, 1).reshape(-1, d)  # repeat-padding
        has = rng.random(n) >= p_missing
        seq[~has] = 0.0
        clip = (seq * valid[..., None]).sum(1) / valid.sum(1, keepdims=True)
        seq_name, valid_name = ("segments", "segment_valid") if m == "audio" else ("frames", "frame_valid")
        out[f"{m}/clip"] = clip.astype(np.float32)
        out[f"{m}/{seq_name}"] = seq
        out[f"{m}/{valid_name}"] = valid & has[:, None]
        out[f"has_{m}"] = has
    both_missing = ~(out["has_audio"] | out["has_face"])
    out["has_audio"][both_missing] = True   # every clip keeps at least one modality
    out["speakers"] = np.array([f"id{k + id_offset:05d}" for k in lab])
    out["ids"] = np.array([f"id{k + id_offset:05d}/v{i % 3}/{i:05d}" for i, k in enumerate(lab)])
    return out


def to_batch(arr: dict[str, np.ndarray]) -> tuple[EmbeddingBatch, torch.Tensor]:
    b = EmbeddingBatch(
        audio_clip=torch.from_numpy(arr["audio/clip"]), audio_seq=torch.from_numpy(arr["audio/segments"]),
        audio_seq_valid=torch.from_numpy(arr["audio/segment_valid"]),
        face_clip=torch.from_numpy(arr["face/clip"]), face_seq=torch.from_numpy(arr["face/frames"]),
        face_seq_valid=torch.from_numpy(arr["face/frame_valid"]),
        has_audio=torch.from_numpy(arr["has_audio"]), has_face=torch.from_numpy(arr["has_face"]))
    labels = torch.from_numpy(np.unique(arr["speakers"], return_inverse=True)[1].astype(np.int64))
    return b, labels

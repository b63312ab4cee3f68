"""Does the fast video path keep the embeddings' meaning? Face embeddings of the same clips
decoded by the exact path and by the fast path, compared per clip with a real-shaped
backbone (e.g. ``iresnet50`` in the registry's seeded random init).

The figure: per clip, the cosine between the clip embeddings (mean of the valid frames'
embeddings, as ``face/clip`` in the cache) of the two paths; per frame, the same for each
frame. The reference scale: the cosine between *different* clips' embeddings by the exact
path, which shows how much a cosine of 0.999 is worth with this backbone (a random init maps
everything close together, so the gap matters, not only the 0.999).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np


def face_embedder(backbone: str = "iresnet18", seed: int = 0):
    """``embed(faces uint8 (F,3,s,s)) -> float32 (F, D)`` with the registry's random init of
    ``backbone`` (fp32, CPU) and the crop size it eats."""
    import torch

    from extractors.registry import load_backbone
    model, info = load_backbone(backbone, "random", seed=seed, device="cpu")
    spec = info["spec"]
    mean = torch.tensor(spec["mean"] or (0.0, 0.0, 0.0)).view(1, 3, 1, 1)
    std = torch.tensor(spec["std"] or (1.0, 1.0, 1.0)).view(1, 3, 1, 1)

    def embed(faces: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            x = torch.from_numpy(np.ascontiguousarray(faces)).float().div_(255.0).sub_(mean).div_(std)
            return model(x).float().numpy()

    return embed, int(spec["crop"])


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def compare_paths(video_paths: Sequence[str], *, backbone: str = "iresnet18", n_frames: int = 8, seed: int = 0,
                  **fast_kwargs) -> dict:
    """Exact vs fast path (``fast_kwargs``: switches of ``decode_video.faces_from_video``) on
    ``video_paths``. Returns ``clip_cos`` (per clip), ``frame_cos_min`` (per clip, the worst
    frame), ``max_pixel_diff`` (per clip), ``valid_equal`` and ``other_clip_cos_max`` (the
    highest cosine between two different clips, exact path; nan for one clip)."""
    from extractors.media.video import faces_from_video
    embed, size = face_embedder(backbone, seed)
    clip_e, clip_f, frame_min, pix, same_valid = [], [], [], [], []
    for p in video_paths:
        fe, ve = faces_from_video(str(p), n_frames, size, exact=True)
        ff, vf = faces_from_video(str(p), n_frames, size, **fast_kwargs)
        same_valid.append(bool(np.array_equal(ve, vf)))
        pix.append(int(np.abs(fe.astype(np.int16) - ff.astype(np.int16)).max()))
        ee, ef = embed(fe), embed(ff)
        frame_min.append(float((_unit(ee) * _unit(ef)).sum(-1)[ve].min()))
        clip_e.append(ee[ve].mean(0))
        clip_f.append(ef[vf].mean(0))
    ce, cf = _unit(np.stack(clip_e)), _unit(np.stack(clip_f))
    cross = ce @ ce.T
    off = cross[~np.eye(len(ce), dtype=bool)]
    return {"backbone": backbone, "clips": len(ce), "clip_cos": (ce * cf).sum(-1).tolist(),
            "frame_cos_min": frame_min, "max_pixel_diff": pix, "valid_equal": all(same_valid),
            "other_clip_cos_max": float(off.max()) if off.size else float("nan")}

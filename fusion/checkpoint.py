"""Head checkpoints: save and load (safe ``weights_only`` loading), and provenance against a cache.

Format: one ``torch.save`` dict, read back with ``torch.load(weights_only=True)``::

    {"format": "avfuse-head/1", "name": str, "config_json": str (head config),
     "meta_json": str (TrainConfig, cache fingerprint + provenance, history, ...),
     "state_dict": {str: Tensor}}
"""

from __future__ import annotations

import io
import json
from pathlib import Path

from fusion.checkpoint_schema import check_blob, check_config, check_parameter_count
from fusion.registry import build_head, get_head
from pipeline.core.errors import HeadError
from pipeline.core.fsio import atomic_write_bytes
from pipeline.core.safeload import load_weights_only

CHECKPOINT_FORMAT = "avfuse-head/1"


# ---------------------------------------------------------------- checkpoints
def save_head(path: str | Path, head, meta: dict | None = None) -> None:
    """Write ``head`` (weights + config) and ``meta`` (JSON-able) to ``path`` atomically."""
    import torch

    blob = {
        "format": CHECKPOINT_FORMAT,
        "name": head.name,
        "config_json": json.dumps(head.config, sort_keys=True),
        "meta_json": json.dumps(meta or {}, sort_keys=True, default=str),
        "state_dict": {k: v.detach().cpu() for k, v in head.state_dict().items()},
    }
    buf = io.BytesIO()
    torch.save(blob, buf)
    atomic_write_bytes(path, buf.getvalue())


def load_head(path: str | Path, device: str = "cpu"):
    """``(head in eval mode, meta dict)`` from a ``save_head`` file.

    Anything that is not such a file (or whose weights do not fit the head it
    names) is a ``HeadError`` with the path.
    """

    path = Path(path)
    if not path.is_file():
        raise HeadError("no such head checkpoint", path=path,
                        hint="train one with `avfuse train --cache C --head NAME --out PATH`")
    blob = load_weights_only(path, HeadError, what="avfuse head checkpoint", map_location=device,
                             hint="was it written by `avfuse train`? retrain if the file is damaged")
    if not isinstance(blob, dict) or blob.get("format") != CHECKPOINT_FORMAT:
        raise HeadError(f"not an avfuse head checkpoint (expected format {CHECKPOINT_FORMAT})", path=path,
                        hint="pass a file written by `avfuse train --out`")
    name, config, meta, state = check_blob(blob, path)
    audio_dim, face_dim, options = check_config(config, path)
    try:
        # an option added after the checkpoint was written: the value its head was built with then
        for k, v in (getattr(get_head(name).cls, "legacy_defaults", None) or {}).items():
            options.setdefault(k, v)
        check_parameter_count(lambda: build_head(name, audio_dim, face_dim, **options), path)
        head = build_head(name, audio_dim, face_dim, **options)
    except HeadError as e:
        raise HeadError(e.message, path=path, hint=e.hint) from e
    except (RuntimeError, ValueError, TypeError, OverflowError) as e:
        raise HeadError(f"cannot build head '{name}' from the checkpoint's config ({str(e).splitlines()[0][:160]})",
                        path=path, hint="retrain the head") from None
    try:
        head.load_state_dict(state, strict=True)
    except (RuntimeError, ValueError) as e:
        raise HeadError(f"weights do not fit head '{name}': {str(e).splitlines()[0][:200]}", path=path,
                        hint="the checkpoint was written by another avfuse version; retrain it") from e
    head.to(device).eval()
    return head, meta


#: the extraction settings that shape the embedding space a head is trained in, besides the
#: backbones: the segment/frame layout a head reads. The rest of a cache's provenance (its
#: manifest, shard size, storage dtype, compute precision, where faces were resized, the avfuse
#: version) does not move embeddings beyond float rounding, so a head trained on one corpus's
#: cache (VoxCeleb2 dev) applies to another's (VoxCeleb1) without ``--force``.
SPACE_CONFIG_KEYS = ("segments", "frames", "min_segment_seconds", "segment_windows")


def _backbone_identity(info):
    """A backbone info without where its weights file lay (a checkpoint identified by its sha256
    may sit at another path on another machine) and, for weights loaded from a checkpoint, without
    the seed (it only seeds random weights; ``--seed`` is recorded either way), unless the loader
    left part of the model at its seeded init. Imported embeddings (``avfuse cache import``) are
    identified by the model name given at import (``--audio-model``/``--face-model``) and their
    size when there is one, else by their source files."""
    if isinstance(info, dict) and info.get("name") == "imported" and info.get("model"):
        return {"name": "imported", "model": info["model"], "embedding_dim": info.get("embedding_dim")}
    if not isinstance(info, dict) or info.get("sha256") is None:
        return info
    # a loader that leaves part of the model at its seeded init says so in its load notes (e.g.
    # mobilenetv2_mel from ImageNet weights: "embedding layer left at seeded random init")
    seeded = any("random" in str(v) for v in (info.get("load_notes") or {}).values())
    return {k: v for k, v in info.items() if k != "weights" and (seeded or k != "seed")}


def space_differences(trained_on: dict, cache: dict) -> list[str]:
    """The provenance entries in which two caches' embedding spaces differ: the backbones (name,
    weights checksum, input spec, preprocessing, seed of random weights) and ``SPACE_CONFIG_KEYS``
    of their ``config``. Empty: a head trained on one applies to the other."""
    diffs = [k for k in ("audio_backbone", "face_backbone")
             if _backbone_identity(trained_on.get(k)) != _backbone_identity(cache.get(k))]
    a, b = trained_on.get("config") or {}, cache.get("config") or {}
    return diffs + [f"config.{k}" for k in SPACE_CONFIG_KEYS if a.get(k) != b.get(k)]


def check_provenance(meta: dict, cache, *, force: bool = False, path: str | Path | None = None) -> None:
    """Raise ``HeadError`` if the head was trained in another embedding space than ``cache``'s.

    The same cache (``meta["cache_fingerprint"]``, written by ``avfuse train``, equals
    ``cache.fingerprint``) passes; so does any cache whose provenance differs from the recorded
    ``meta["cache_provenance"]`` only outside the embedding space (:func:`space_differences`:
    another manifest, e.g. trained on VoxCeleb2 dev and scored on VoxCeleb1). A checkpoint
    without a recorded provenance must match the fingerprint. ``force=True`` skips the check.
    """
    want = meta.get("cache_fingerprint")
    if force or want is None or want == cache.fingerprint:
        return
    prov = meta.get("cache_provenance")
    diffs = space_differences(prov, cache.provenance or {}) if isinstance(prov, dict) else ["no recorded provenance"]
    if not diffs:
        return
    raise HeadError(f"head was trained in another embedding space: on a cache with fingerprint {want}, "
                    f"this cache is {cache.fingerprint} (differs in: {', '.join(diffs)})", path=path,
                    hint="retrain the head on embeddings from the same backbones and settings, or pass --force "
                         "if the embeddings are compatible (imported caches: import both with the same "
                         "--audio-model/--face-model name)")


def check_dims(head, cache, path: str | Path | None = None) -> None:
    """A ``HeadError`` when the head's embedding sizes differ from the cache's (``--force`` cannot
    bridge that: the shapes do not multiply)."""
    cfg = getattr(head, "config", None) or {}
    lay = getattr(cache, "layout", None)
    if lay is None:
        return
    diffs = [f"{m} {cfg.get(k)}-d vs {getattr(lay, k)}-d" for m, k in (("audio", "audio_dim"), ("face", "face_dim"))
             if cfg.get(k) is not None and getattr(lay, k) is not None and cfg.get(k) != getattr(lay, k)]
    if diffs:
        raise HeadError(f"head takes other embedding sizes than this cache ({', '.join(diffs)} in the cache)",
                        path=path or getattr(head, "path", None),
                        hint="use a head trained on a cache of these backbones (--force cannot change sizes)")

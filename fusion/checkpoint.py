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


def check_provenance(meta: dict, cache, *, force: bool = False, path: str | Path | None = None) -> None:
    """Raise ``HeadError`` if the head was trained on a cache with other provenance.

    Compares ``meta["cache_fingerprint"]`` (written by ``avfuse train``) with
    ``cache.fingerprint``; ``force=True`` skips the check (the user's call).
    """
    want = meta.get("cache_fingerprint")
    if force or want is None or want == cache.fingerprint:
        return
    prov = meta.get("cache_provenance") or {}
    diffs = []
    for key in ("audio_backbone", "face_backbone", "manifest_fingerprint", "config"):
        a, b = prov.get(key), (cache.provenance or {}).get(key)
        if a != b:
            diffs.append(key)
    what = f" (differs in: {', '.join(diffs)})" if diffs else ""
    raise HeadError(f"head was trained on a cache with fingerprint {want}, this cache is "
                    f"{cache.fingerprint}{what}", path=path,
                    hint="retrain the head on this cache, or pass --force if the embeddings are compatible")


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

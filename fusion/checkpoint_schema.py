"""A head checkpoint is untrusted data: its schema, sizes and weights are checked before use.

``check_blob(blob, path)`` -> ``(name, config, meta, state)`` or one ``HeadError`` line:

* ``name`` a str; ``config_json``/``meta_json`` strings holding JSON *objects*;
  ``state_dict`` a dict of str -> tensor;
* ``config`` has ``audio_dim`` and ``face_dim`` (whole numbers in ``[1, MAX_DIM]``), every
  other whole-number option in ``[0, MAX_DIM]`` (``iterations``/``n_heads``/``grid`` at most
  ``MAX_REPEAT``), every float finite;
* ``meta``: ``cache_fingerprint`` a str or null, ``cache_provenance`` an object or null,
  ``history`` a list, ``train_config`` an object (when present);
* every floating weight finite (a head trained into NaN is refused, not scored).

``check_parameter_count(build, path)`` calls ``build()`` on PyTorch's ``meta`` device (no
memory) and refuses more than ``MAX_PARAMETERS`` parameters, so a crafted size never
allocates the model before it is refused.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from pipeline.core.errors import HeadError

MAX_DIM = 65536
MAX_REPEAT = 4096
MAX_PARAMETERS = 200_000_000
_REPEATS = ("iterations", "n_heads", "grid")
_HINT = "pass a head checkpoint written by `avfuse train --out` (retrain it if damaged)"


def _whole(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _json_object(blob: dict, key: str, path) -> dict:
    raw = blob.get(key)
    if not isinstance(raw, str):
        raise HeadError(f"damaged head checkpoint: {key} is {type(raw).__name__}, not a JSON string",
                        path=path, hint=_HINT)
    try:
        obj = json.loads(raw)
    except ValueError as e:
        raise HeadError(f"damaged head checkpoint: {key} is not valid JSON ({e})", path=path, hint=_HINT) from None
    if not isinstance(obj, dict):
        raise HeadError(f"damaged head checkpoint: {key} is a JSON {type(obj).__name__}, not an object",
                        path=path, hint=_HINT)
    return obj


def check_config(config: dict, path) -> tuple[int, int, dict]:
    """``(audio_dim, face_dim, the other options)`` of a checked head config."""
    config = dict(config)
    dims = {key: config.pop(key, None) for key in ("audio_dim", "face_dim")}
    for key, v in dims.items():
        if not _whole(v) or not 1 <= v <= MAX_DIM:
            raise HeadError(f"head config {key} must be a whole number in [1, {MAX_DIM}], got {v!r}",
                            path=path, hint=_HINT)
    for k, v in config.items():
        top = MAX_REPEAT if k in _REPEATS else MAX_DIM
        if _whole(v) and not 0 <= v <= top:
            raise HeadError(f"head config {k} = {v} is out of range [0, {top}]", path=path, hint=_HINT)
        if isinstance(v, float) and not math.isfinite(v):
            raise HeadError(f"head config {k} = {v} is not finite", path=path, hint=_HINT)
        if isinstance(v, (dict, list)):
            raise HeadError(f"head config {k} must be a number, string or bool, got {type(v).__name__}",
                            path=path, hint=_HINT)
    return dims["audio_dim"], dims["face_dim"], config


def check_meta(meta: dict, path) -> dict:
    for key, types in (("cache_fingerprint", (str, type(None))), ("cache_provenance", (dict, type(None))),
                       ("history", (list,)), ("train_config", (dict,))):
        if key in meta and not isinstance(meta[key], types):
            raise HeadError(f"damaged head checkpoint: meta {key} is {type(meta[key]).__name__}", path=path,
                            hint=_HINT)
    return meta


def check_state(state, path) -> dict:
    import torch

    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                              for k, v in state.items()):
        raise HeadError("damaged head checkpoint: state_dict is not a dict of named tensors", path=path, hint=_HINT)
    bad = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise HeadError(f"head weights are not finite (NaN/inf in {len(bad)} tensor(s), e.g. {bad[0]}); "
                        f"training diverged", path=path, hint="retrain the head with a lower --lr")
    return state


def check_blob(blob: dict, path: str | Path):
    """``(name, config, meta, state)`` of a checkpoint dict, all checked (see the module doc)."""
    name = blob.get("name")
    if not isinstance(name, str):
        raise HeadError(f"damaged head checkpoint: name is {type(name).__name__}, not a str", path=path, hint=_HINT)
    config = _json_object(blob, "config_json", path)
    meta = check_meta(_json_object(blob, "meta_json", path), path)
    return name, config, meta, check_state(blob.get("state_dict"), path)


def check_parameter_count(build, path) -> None:
    """Build the head with ``build()`` on the meta device and refuse more than ``MAX_PARAMETERS``."""
    import torch

    with torch.device("meta"):
        head = build()
    n = sum(p.numel() for p in head.parameters())
    if n > MAX_PARAMETERS:
        raise HeadError(f"head config implies {n:,} parameters, more than the {MAX_PARAMETERS:,} avfuse loads",
                        path=path, hint=_HINT)

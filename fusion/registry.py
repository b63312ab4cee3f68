"""The fusion-head registry and head checkpoints.

A name maps to a ``HeadEntry`` (the head class plus a one-line description).
Head modules register themselves on import; the built-in ones
(``fusion.heads``, ``fusion.attention``) are imported lazily on first lookup so
``avfuse --help`` stays fast.

Checkpoint format (``save_head``/``load_head``), one ``torch.save`` dict read back
with ``torch.load(weights_only=True)``::

    {"format": "avfuse-head/1", "name": str, "config_json": str (head config),
     "meta_json": str (TrainConfig, cache fingerprint + provenance, history, ...),
     "state_dict": {str: Tensor}}
"""

from __future__ import annotations

import importlib
import inspect
import io
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.config import atomic_write_bytes
from pipeline.errors import HeadError

BUILTIN_MODULES: list[str] = ["fusion.heads", "fusion.attention"]
CHECKPOINT_FORMAT = "avfuse-head/1"


@dataclass
class HeadEntry:
    """A registered head: ``cls(audio_dim=..., face_dim=..., **options)`` builds it."""

    name: str
    cls: type
    description: str = ""
    defaults: dict | None = None      # options fixed for this name (e.g. dca: gate=True)
    recipe: dict | None = None        # training defaults (``fusion.recipes``; None: the clip recipe)

    def train_recipe(self) -> dict:
        """The head's training recipe, every ``fusion.recipes.RECIPE_FIELDS`` field set."""
        from fusion.recipes import full_recipe
        return full_recipe(self.recipe)

    @property
    def needs_sequences(self) -> bool:
        return bool(getattr(self.cls, "needs_sequences", False))

    @property
    def trainable(self) -> bool:
        return bool(getattr(self.cls, "trainable", True))

    def options(self) -> dict[str, Any]:
        """The head's keyword options and their defaults (after this entry's fixed ones)."""
        sig = inspect.signature(self.cls.__init__)
        out = {k: p.default for k, p in sig.parameters.items()
               if k not in ("self", "audio_dim", "face_dim") and p.default is not p.empty}
        out.update(self.defaults or {})
        return out

    def build(self, audio_dim: int, face_dim: int, **options: Any):
        """Instantiate the head; unknown options -> ``HeadError`` naming the known ones."""
        known = self.options()
        unknown = sorted(set(options) - set(known))
        if unknown:
            raise HeadError(f"head '{self.name}' has no option(s) {', '.join(unknown)}",
                            hint=f"its options: {', '.join(sorted(known)) or '(none)'}")
        fixed = dict(self.defaults or {})
        clash = {k for k in options if k in fixed and options[k] != fixed[k]}
        if clash:
            raise HeadError(f"head '{self.name}' fixes option(s) {', '.join(sorted(clash))}",
                            hint="pick the head name with the variant you want (see `avfuse heads`)")
        kwargs = {**fixed, **options}
        try:
            head = self.cls(audio_dim=int(audio_dim), face_dim=int(face_dim), **kwargs)
        except (TypeError, ValueError) as e:
            raise HeadError(f"cannot build head '{self.name}': {e}") from e
        head.name = self.name
        # the full resolved config, so a checkpoint rebuilds the same head even if defaults change
        head.config = {"audio_dim": int(audio_dim), "face_dim": int(face_dim), **known, **kwargs}
        return head


_REGISTRY: dict[str, HeadEntry] = {}
_loaded_builtins = False


def register_head(name: str, cls: type, description: str = "", defaults: dict | None = None,
                  recipe: dict | None = None) -> HeadEntry:
    """Register ``cls`` under ``name`` (re-registering a name replaces it); ``recipe``: its
    training defaults (``fusion.recipes``)."""
    entry = HeadEntry(name=name, cls=cls, description=description, defaults=defaults, recipe=recipe)
    _REGISTRY[name] = entry
    return entry


def _load_builtins() -> None:
    global _loaded_builtins
    if not _loaded_builtins:
        _loaded_builtins = True
        for mod in BUILTIN_MODULES:
            importlib.import_module(mod)


def get_head(name: str) -> HeadEntry:
    """The entry for ``name``; unknown -> ``HeadError`` listing the known names."""
    _load_builtins()
    if name not in _REGISTRY:
        raise HeadError(f"unknown fusion head '{name}'",
                        hint=f"known heads: {', '.join(_REGISTRY)} (see `avfuse heads`)")
    return _REGISTRY[name]


def list_heads() -> list[HeadEntry]:
    """All registered heads, in registration order."""
    _load_builtins()
    return list(_REGISTRY.values())


def build_head(name: str, audio_dim: int, face_dim: int, **options: Any):
    """``get_head(name).build(audio_dim, face_dim, **options)``."""
    return get_head(name).build(audio_dim, face_dim, **options)


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
    import torch

    path = Path(path)
    if not path.is_file():
        raise HeadError("no such head checkpoint", path=path,
                        hint="train one with `avfuse train --cache C --head NAME --out PATH`")
    try:
        blob = torch.load(path, map_location=device, weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling failure is a bad file
        text = " ".join(str(e).split())
        glob = re.search(r"unsupported (GLOBAL \S+)", text, re.IGNORECASE)
        why = (f"torch.load(weights_only=True) refused to unpickle {glob.group(1)}" if glob
               else f"{type(e).__name__}: {text[:200]}")
        raise HeadError(f"not a readable head checkpoint ({why})", path=path,
                        hint="was it written by `avfuse train`? retrain if the file is damaged") from e
    if not isinstance(blob, dict) or blob.get("format") != CHECKPOINT_FORMAT:
        raise HeadError(f"not an avfuse head checkpoint (expected format {CHECKPOINT_FORMAT})", path=path,
                        hint="pass a file written by `avfuse train --out`")
    try:
        config = json.loads(blob["config_json"])
        meta = json.loads(blob["meta_json"])
        state = blob["state_dict"]
        name = blob["name"]
    except (KeyError, ValueError) as e:
        raise HeadError(f"damaged head checkpoint ({e})", path=path, hint="retrain the head") from e
    config = dict(config)
    audio_dim, face_dim = config.pop("audio_dim"), config.pop("face_dim")
    try:
        head = build_head(name, audio_dim, face_dim, **config)
    except HeadError as e:
        raise HeadError(e.message, path=path, hint=e.hint) from e
    try:
        head.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise HeadError(f"weights do not fit head '{name}': {str(e).splitlines()[0]}", path=path,
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

"""The fusion-head registry: a name maps to a ``HeadEntry`` (the head class, a one-line
description, fixed options).

Head modules register themselves on import; the built-in ones (``fusion.heads.clip``,
``fusion.heads.attention``) are imported lazily on first lookup so ``avfuse --help``
stays fast. The mechanism is ``pipeline.core.registry.Registry``.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any

from pipeline.core.errors import HeadError
from pipeline.core.registry import Registry

BUILTIN_MODULES: list[str] = ["fusion.heads.clip", "fusion.heads.attention"]


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
        except (TypeError, ValueError, RuntimeError, OverflowError) as e:
            raise HeadError(f"cannot build head '{self.name}': {str(e).splitlines()[0][:200] if str(e) else e!r}",
                            hint=f"check the options of '{self.name}' (see `avfuse heads`)") from None
        head.name = self.name
        # the full resolved config, so a checkpoint rebuilds the same head even if defaults change
        head.config = {"audio_dim": int(audio_dim), "face_dim": int(face_dim), **known, **kwargs}
        return head


HEADS: Registry[HeadEntry] = Registry(
    "fusion head", HeadError, BUILTIN_MODULES,
    hint=lambda names: f"known heads: {', '.join(names)} (see `avfuse heads`)")


def register_head(name: str, cls: type, description: str = "", defaults: dict | None = None,
                  recipe: dict | None = None, *, replace: bool = False) -> HeadEntry:
    """Register ``cls`` under ``name`` (see ``pipeline.core.registry`` for the duplicate rule);
    ``recipe``: its training defaults (``fusion.recipes``)."""
    return HEADS.register(name, HeadEntry(name=name, cls=cls, description=description, defaults=defaults,
                                          recipe=recipe), replace=replace)


def get_head(name: str) -> HeadEntry:
    """The entry for ``name``; unknown -> ``HeadError`` listing the known names."""
    return HEADS.get(name)


def list_heads() -> list[HeadEntry]:
    """All registered heads, in registration order."""
    return HEADS.values()


def build_head(name: str, audio_dim: int, face_dim: int, **options: Any):
    """``get_head(name).build(audio_dim, face_dim, **options)``."""
    return get_head(name).build(audio_dim, face_dim, **options)



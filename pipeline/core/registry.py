"""One registry mechanism for every name -> entry table of avfuse (backbones, fusion heads).

Like torchvision's ``register_model``/``get_model``: entries register themselves when
their module is imported; the built-in modules are imported on the first lookup, so
``avfuse --help`` imports none of them. One rule for duplicates: a name registered
again with an equal entry is a no-op (a module imported twice), with a different one
it is an error naming both, unless ``replace=True`` says so on purpose. An unknown
name raises the registry's error type with the known names.
"""

from __future__ import annotations

import importlib
from typing import Callable, Generic, Iterator, Sequence, TypeVar

from pipeline.core.errors import AvfuseError

T = TypeVar("T")


class Registry(Generic[T]):
    """``kind`` names what is registered in messages ("backbone", "fusion head")."""

    def __init__(self, kind: str, error: type[AvfuseError], builtin_modules: Sequence[str] = (),
                 hint: Callable[[list[str]], str] | None = None):
        self.kind, self.error = kind, error
        self.builtin_modules = list(builtin_modules)
        self._hint = hint or (lambda names: f"known {kind}s: {', '.join(names) or '(none)'}")
        self._entries: dict[str, T] = {}
        self._loaded = False

    def register(self, name: str, entry: T, *, replace: bool = False) -> T:
        old = self._entries.get(name)
        if old is not None and not replace and old is not entry and old != entry:
            raise self.error(f"{self.kind} {name!r} is registered twice, with different definitions",
                             hint="pick another name, or register with replace=True")
        self._entries[name] = entry
        return entry

    def load_builtins(self) -> None:
        if self._loaded:
            return
        self._loaded = True
        for mod in self.builtin_modules:
            try:
                importlib.import_module(mod)
            except ModuleNotFoundError as e:
                if e.name != mod:  # a real missing dependency inside the module
                    raise

    def get(self, name: str) -> T:
        self.load_builtins()
        if name not in self._entries:
            raise self.error(f"unknown {self.kind} {name!r}", hint=self._hint(list(self._entries)))
        return self._entries[name]

    def names(self) -> list[str]:
        self.load_builtins()
        return list(self._entries)

    def values(self) -> list[T]:
        """Entries in registration order."""
        self.load_builtins()
        return list(self._entries.values())

    def __contains__(self, name: object) -> bool:
        self.load_builtins()
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self.names())

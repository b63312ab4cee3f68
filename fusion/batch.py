"""``EmbeddingBatch``: the cached embeddings of a set of clips, as torch tensors.

Every fusion head eats one of these. Field names follow the cache arrays
(docs/DESIGN.md "Embedding cache"):

| field | shape | cache array |
| --- | --- | --- |
| ``audio_clip`` | B x Da | ``audio/clip`` |
| ``audio_seq`` | B x S x Da | ``audio/segments`` |
| ``audio_seq_valid`` | B x S (bool) | ``audio/segment_valid`` |
| ``face_clip`` | B x Dv | ``face/clip`` |
| ``face_seq`` | B x F x Dv | ``face/frames`` |
| ``face_seq_valid`` | B x F (bool) | ``face/frame_valid`` |
| ``has_audio``, ``has_face`` | B (bool) | ``has_audio``, ``has_face`` |

Any tensor field may be ``None`` (sequence fields for heads that do not need
them). A modality is *present* in a row iff its ``has_*`` flag is True; a head
must never look at the vectors of an absent modality. Modality masking during
training only flips ``has_*`` (``EmbeddingBatch.masked``), so a masked modality
is treated exactly like a missing one.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Iterable, Sequence

import torch

from pipeline.core.modes import MODALITIES

TENSOR_FIELDS = ("audio_clip", "audio_seq", "audio_seq_valid", "face_clip", "face_seq",
                 "face_seq_valid", "has_audio", "has_face")
FLOAT_FIELDS = ("audio_clip", "audio_seq", "face_clip", "face_seq")


def check_use(use: Iterable[str]) -> tuple[str, ...]:
    """Validate a ``use`` argument (a subset of ``("A", "V")``, non-empty)."""
    from pipeline.core.errors import HeadError

    if isinstance(use, str):
        use = tuple(use)          # "AV" -> ("A", "V")
    use = tuple(use)
    bad = [u for u in use if u not in MODALITIES]
    if bad or not use:
        raise HeadError(f"bad modality selection {use!r}",
                        hint="use a non-empty subset of ('A', 'V'), e.g. ('A',) for audio only")
    return use


@dataclass
class EmbeddingBatch:
    """The cached embeddings of B clips (see the module docstring for the fields)."""

    audio_clip: torch.Tensor | None = None
    audio_seq: torch.Tensor | None = None
    audio_seq_valid: torch.Tensor | None = None
    face_clip: torch.Tensor | None = None
    face_seq: torch.Tensor | None = None
    face_seq_valid: torch.Tensor | None = None
    has_audio: torch.Tensor | None = None
    has_face: torch.Tensor | None = None

    def __post_init__(self) -> None:
        n = None
        for name in TENSOR_FIELDS:
            t = getattr(self, name)
            if t is None:
                continue
            if n is None:
                n = t.shape[0]
            elif t.shape[0] != n:
                raise ValueError(f"EmbeddingBatch.{name} has {t.shape[0]} rows, expected {n}")
        if n is None:
            raise ValueError("EmbeddingBatch needs at least one tensor")
        dev = next(getattr(self, f) for f in TENSOR_FIELDS if getattr(self, f) is not None).device
        # absent modality arrays: all-False flags, so heads never read them
        if self.has_audio is None:
            self.has_audio = torch.zeros(n, dtype=torch.bool, device=dev)
        if self.has_face is None:
            self.has_face = torch.zeros(n, dtype=torch.bool, device=dev)
        self.has_audio = self.has_audio.bool()
        self.has_face = self.has_face.bool()

    # ------------------------------------------------------------------ basics
    def __len__(self) -> int:
        return int(self.has_audio.shape[0])

    @property
    def device(self) -> torch.device:
        return self.has_audio.device

    @property
    def has_sequences(self) -> bool:
        """True when both per-step sequences are loaded (for the attention heads)."""
        return self.audio_seq is not None and self.face_seq is not None

    def _map(self, fn) -> "EmbeddingBatch":
        return EmbeddingBatch(**{f: (None if getattr(self, f) is None else fn(f, getattr(self, f)))
                                 for f in TENSOR_FIELDS})

    def to(self, device: str | torch.device | None = None, dtype: torch.dtype | None = None,
           non_blocking: bool = False) -> "EmbeddingBatch":
        """Move every tensor to ``device``; float fields are also cast to ``dtype`` if given."""
        def fn(name, t):
            if dtype is not None and name in FLOAT_FIELDS:
                return t.to(device=device, dtype=dtype, non_blocking=non_blocking)
            return t.to(device=device, non_blocking=non_blocking)
        return self._map(fn)

    def float(self) -> "EmbeddingBatch":
        """Float fields as float32 (a no-op for fields that already are)."""
        return self.to(dtype=torch.float32)

    def __getitem__(self, rows) -> "EmbeddingBatch":
        """Rows selected by an index tensor / list / slice / bool mask."""
        if isinstance(rows, (list, tuple)):
            rows = torch.as_tensor(rows, dtype=torch.long)
        if isinstance(rows, torch.Tensor) and rows.dtype != torch.bool:
            rows = rows.to(self.device)
            return self._map(lambda _n, t: t.index_select(0, rows))
        if isinstance(rows, torch.Tensor):
            rows = rows.to(self.device)
        return self._map(lambda _n, t: t[rows])

    def select(self, use: Sequence[str]) -> "EmbeddingBatch":
        """A view in which the modalities not in ``use`` are absent (``has_*`` False)."""
        use = check_use(use)
        return dataclasses.replace(
            self,
            has_audio=self.has_audio if "A" in use else torch.zeros_like(self.has_audio),
            has_face=self.has_face if "V" in use else torch.zeros_like(self.has_face))

    def masked(self, drop_audio: torch.Tensor, drop_face: torch.Tensor) -> "EmbeddingBatch":
        """A view with audio absent where ``drop_audio`` and face absent where ``drop_face``."""
        return dataclasses.replace(self, has_audio=self.has_audio & ~drop_audio.bool(),
                                   has_face=self.has_face & ~drop_face.bool())

    def present(self, use: Sequence[str] = MODALITIES) -> tuple[torch.Tensor, torch.Tensor]:
        """``(audio_present, face_present)`` bool (B,) masks after ``use``."""
        use = check_use(use)
        a = self.has_audio if "A" in use else torch.zeros_like(self.has_audio)
        v = self.has_face if "V" in use else torch.zeros_like(self.has_face)
        return a, v

    def nbytes(self) -> int:
        """Bytes held by the tensors (for memory reports)."""
        return sum(t.numel() * t.element_size() for f in TENSOR_FIELDS
                   if (t := getattr(self, f)) is not None)

    @staticmethod
    def cat(batches: Sequence["EmbeddingBatch"]) -> "EmbeddingBatch":
        """Row-wise concatenation (fields must be None in all or none of the batches)."""
        out = {}
        for f in TENSOR_FIELDS:
            ts = [getattr(b, f) for b in batches]
            if all(t is None for t in ts):
                out[f] = None
            elif any(t is None for t in ts):
                raise ValueError(f"cannot concatenate batches: {f} is missing in some")
            else:
                out[f] = torch.cat(ts, 0)
        return EmbeddingBatch(**out)


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """``None``/``"auto"`` -> ``cuda`` when available, else ``cpu``."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    from pipeline.core.errors import ConfigError
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError, TypeError) as e:
        raise ConfigError(f"bad --device {device!r} ({str(e).splitlines()[0][:120]})",
                          hint="use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda":
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if n == 0:
            raise ConfigError(f"--device {device}: no CUDA device on this machine", hint="use --device cpu")
        if dev.index is not None and dev.index >= n:
            raise ConfigError(f"--device {device}: this machine has {n} CUDA device(s) (cuda:0..cuda:{n - 1})",
                              hint="pick one of them, or --device cpu")
    return dev

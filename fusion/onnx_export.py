"""Fusion heads to ONNX: the head's ``embed`` as a graph with a dynamic batch axis.

Inputs are the ``EmbeddingBatch`` fields the head reads (float32 embeddings, bool
flags), output ``embedding`` ``(B, D)`` exactly as ``head.embed(batch)`` returns it
(not L2-normalised: ``score_kind`` "cosine" heads are compared after normalising,
"dot" heads by a raw dot product; the model's metadata says which).

| head kind | inputs |
| --- | --- |
| clip heads (``score_avg``, ``mean``, ``mlp``, ``multiview``) | ``audio_clip (B, Da)``, ``face_clip (B, Dv)``, ``has_audio (B,)``, ``has_face (B,)`` |
| sequence heads (``cross_attention``, ``jca``, ``dca``) | ``audio_seq (B, S, Da)``, ``audio_seq_valid (B, S)``, ``face_seq (B, F, Dv)``, ``face_seq_valid (B, F)``, ``has_audio``, ``has_face`` |

One-sided scoring (AVxA's test side) = passing ``has_face`` all False: a head treats
a row without a modality exactly like ``use=("A",)``. The graph is traced with the
legacy TorchScript exporter (``dynamo=False``): ``embed`` has data-dependent
branches (``if present.any()``) that ``torch.export`` refuses; tracing with every row
present keeps the "compute, then mask" branch, which gives the same values for any
mix of present/absent rows (absent rows are multiplied by 0 or replaced by fillers).
The example batch has one row: the heads size a few zero/filler tensors with
``len(batch)``, which a trace turns into a constant; a constant 1 broadcasts against
any batch, a constant 4 would not. The attention heads' step count is part of their
architecture (a Linear over time), so their step axes are static; their BiLSTM is traced
in its step-by-step form (``BiLSTMEncoder.unrolled``: no sort or packing ops, the same
outputs at valid steps). ``check_onnx`` compares onnxruntime with PyTorch on other batch
sizes, with absent modalities and invalid steps.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import torch
from torch import nn

from fusion.batch import EmbeddingBatch
from pipeline.core.errors import HeadError

CLIP_INPUTS = ("audio_clip", "face_clip", "has_audio", "has_face")
SEQ_INPUTS = ("audio_seq", "audio_seq_valid", "face_seq", "face_seq_valid", "has_audio", "has_face")
OPSET = 17


class EmbedModule(nn.Module):
    """``forward(*inputs) = head.embed(EmbeddingBatch(**inputs))`` with float32 output."""

    def __init__(self, head: nn.Module):
        super().__init__()
        self.head = head
        self.inputs = SEQ_INPUTS if getattr(head, "needs_sequences", False) else CLIP_INPUTS

    def forward(self, *xs: torch.Tensor) -> torch.Tensor:
        return self.head.embed(EmbeddingBatch(**dict(zip(self.inputs, xs)))).float()


def example_inputs(head, batch: int = 4, steps: int = 8, frames: int = 8, *, seed: int = 0,
                   absent: bool = False) -> dict[str, torch.Tensor]:
    """Random inputs for ``head`` (every row present, or with ``absent`` some rows missing a
    modality and some steps invalid)."""
    g = torch.Generator().manual_seed(seed)
    da, dv = head.audio_dim, head.face_dim
    x = {"audio_clip": torch.randn(batch, da, generator=g), "face_clip": torch.randn(batch, dv, generator=g),
         "audio_seq": torch.randn(batch, steps, da, generator=g), "face_seq": torch.randn(batch, frames, dv, generator=g),
         "audio_seq_valid": torch.ones(batch, steps, dtype=torch.bool),
         "face_seq_valid": torch.ones(batch, frames, dtype=torch.bool),
         "has_audio": torch.ones(batch, dtype=torch.bool), "has_face": torch.ones(batch, dtype=torch.bool)}
    if absent:
        x["has_audio"][1::3] = False
        x["has_face"][2::3] = False
        x["audio_seq_valid"][:, steps // 2:] = torch.rand(batch, steps - steps // 2, generator=g) > 0.5
        x["face_seq_valid"][0, 1:] = False
    names = SEQ_INPUTS if getattr(head, "needs_sequences", False) else CLIP_INPUTS
    return {k: x[k] for k in names}


def export_onnx(head, out: str | Path | None = None, *, meta: dict | None = None, steps: int = 8,
                frames: int = 8, opset: int = OPSET) -> bytes:
    """The ONNX model of ``head.embed`` (bytes; also written atomically to ``out`` when given).

    ``steps``/``frames``: the example sequence lengths. A head with a fixed step count (the
    attention heads' ``steps`` option: their time-axis key is a Linear(steps, steps)) is
    exported at that count and its step axes are static (pad shorter sequences with invalid
    steps, as ``embed`` does); other heads' step axes are dynamic. A head that cannot be
    traced -> ``HeadError``."""
    import warnings

    from pipeline.core.fsio import atomic_write_bytes
    head = head.eval()
    module = EmbedModule(head).eval()
    fixed = getattr(head, "config", {}).get("steps")
    if fixed:
        steps = frames = int(fixed)
    ex = example_inputs(head, batch=1, steps=steps, frames=frames)   # batch 1: see the module docstring
    dyn = {k: ({0: "batch"} if fixed or "seq" not in k else {0: "batch", 1: "steps" if k.startswith("audio")
                                                               else "frames"}) for k in ex}
    dyn["embedding"] = {0: "batch"}
    buf = io.BytesIO()
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")   # TracerWarnings for the `if present.any()` branches (see docstring)
            torch.onnx.export(module, tuple(ex.values()), buf, dynamo=False, input_names=list(ex),
                              output_names=["embedding"], dynamic_axes=dyn, opset_version=opset)
    except Exception as e:  # noqa: BLE001 - any exporter failure is this head's
        raise HeadError(f"head '{getattr(head, 'name', '?')}' cannot be exported to ONNX "
                        f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})",
                        hint="clip heads (mean, mlp, multiview, score_avg) and the attention heads export; "
                             "a custom head must be traceable with torch.jit.trace") from e
    data = _with_metadata(buf.getvalue(), head, meta or {})
    if out is not None:
        atomic_write_bytes(out, data)
    return data


def _with_metadata(data: bytes, head, meta: dict) -> bytes:
    """Head name, config, score kind and the cache fingerprint as ONNX metadata (needs ``onnx``;
    without it the model is returned as exported)."""
    try:
        import onnx
    except ImportError:
        return data
    model = onnx.load_from_string(data)
    want = SEQ_INPUTS if getattr(head, "needs_sequences", False) else CLIP_INPUTS
    lost = [k for k in want if k not in {i.name for i in model.graph.input}]
    if lost:  # the tracer dropped inputs the output does not depend on: embed left the torch graph
        raise HeadError(f"head '{getattr(head, 'name', '?')}' cannot be exported to ONNX (the traced output "
                        f"does not depend on {', '.join(lost)}: its embed leaves the torch graph, e.g. "
                        f"through numpy or Python numbers)",
                        hint="a custom head must compute embed with torch operations only")
    props = {"avfuse_head": getattr(head, "name", "?"), "score_kind": getattr(head, "score_kind", "cosine"),
             "head_config": json.dumps(getattr(head, "config", {}), sort_keys=True),
             "cache_fingerprint": str(meta.get("cache_fingerprint", "")),
             "inputs": ",".join(SEQ_INPUTS if getattr(head, "needs_sequences", False) else CLIP_INPUTS)}
    for k, v in props.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = k, v
    return model.SerializeToString()


def check_onnx(head, data: bytes, *, batch: int = 7, steps: int = 8, frames: int = 8, seed: int = 1) -> float:
    """Max |onnxruntime - PyTorch| of ``embed`` on a random batch with absent modalities."""
    try:
        import onnxruntime as ort
    except ImportError as e:
        raise HeadError("onnxruntime is not installed, so the export cannot be checked",
                        hint="pip install onnxruntime (or pass --no-check)") from e
    x = example_inputs(head, batch, steps, frames, seed=seed, absent=True)
    sess = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    got = sess.run(["embedding"], {k: v.numpy() for k, v in x.items()})[0]
    with torch.no_grad():
        ref = EmbedModule(head.eval())(*x.values()).numpy()
    return float(np.abs(got - ref).max())

"""Host (CPU) cost of one fusion training step, without the arithmetic: what bounds an epoch on a GPU.

On a GPU the model arithmetic of a clip head's step (``mlp``: ~2.4 GFLOP with the 5,994-class AAM
classifier) takes microseconds; what remains is the host's work per step: Python, the autograd
engine, the optimiser, ~100 kernel launches. This script measures that work on the CPU with
tiny embeddings (8-d) and 8 classes, so the arithmetic is negligible and process CPU per step
is the host's cost: ``fit_head`` exactly as ``avfuse train`` runs it (masking, AAM, fused AdamW,
batch 256), one epoch of ``--steps`` steps, after a warm-up, best of ``--repeats``.

A full VoxCeleb2-dev epoch at batch 256 is 4,266 steps, so ``4,266 x (host ms per step)`` is a
floor of its time on any GPU at this per-core speed (the launches of step k+1 overlap step k's
kernels only while nothing waits for the device).

    python benchmarks/train_step_speed.py [--steps 400] [--repeats 3] [--json out.json]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import save_json  # noqa: E402

VOX2_STEPS = 4266          # ceil(1,092,009 / 256)
HEADS = {"mean": {"dim": 8}, "mlp": {"dim": 8, "hidden": 8}, "multiview": {"dim": 8, "hidden": 8}}


def host_ms_per_step(head: str, steps: int, repeats: int) -> float:
    import torch

    from fusion.batch import EmbeddingBatch
    from fusion.trainer import TrainConfig, fit_head
    n = 256 * steps
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 8, (n,), generator=g)
    batch = EmbeddingBatch(audio_clip=torch.randn(n, 8, generator=g).half(),
                           face_clip=torch.randn(n, 8, generator=g).half(),
                           has_audio=torch.ones(n, dtype=torch.bool), has_face=torch.ones(n, dtype=torch.bool))
    cfg = TrainConfig(epochs=1, batch_size=256, device="cpu", mask_prob=0.3, head_options=HEADS[head])
    fit_head(batch[torch.arange(2048)], labels[:2048], head, cfg, progress=False)       # warm-up
    best = float("inf")
    for _ in range(repeats):
        t0 = time.process_time()
        fit_head(batch, labels, head, cfg, progress=False)
        best = min(best, (time.process_time() - t0) / steps * 1e3)
    return best


#: ops that make the host wait for a CUDA device (a value read back, or a data-dependent shape)
SYNC_OPS = {"aten.nonzero.default", "aten._local_scalar_dense.default", "aten.masked_select.default",
            "aten.is_nonzero.default", "aten._unique2.default", "aten.unique_consecutive.default"}


def syncs_per_step(head: str, steps: int = 4) -> float:
    """Ops of a training step that would make the host wait for a CUDA device, counted on the CPU
    (a ``TorchDispatchMode``): one epoch of ``2 * steps`` steps minus one of ``steps``, per step, so
    the set-up and the once-per-epoch checks cancel out. A boolean-mask index counts once (it is a
    ``nonzero`` inside). The attention heads pack their BiLSTM by lengths read on the host: the
    ``.cpu()`` copy is not an op here, so their count is a floor."""
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode

    from fusion.batch import EmbeddingBatch
    from fusion.trainer import TrainConfig, fit_head

    class Count(TorchDispatchMode):
        n = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            name = str(func)
            if name in SYNC_OPS or (name.startswith("aten.index.Tensor")
                                    and any(t is not None and t.dtype == torch.bool for t in args[1])):
                Count.n += 1
            return func(*args, **(kwargs or {}))

    seq = head in ("dca", "jca", "cross_attention")
    counts = []
    for k in (steps, 2 * steps):
        n = 16 * k
        g = torch.Generator().manual_seed(0)
        f = {"audio_clip": torch.randn(n, 8, generator=g), "face_clip": torch.randn(n, 8, generator=g)}
        if seq:
            f.update(audio_seq=torch.randn(n, 2, 8, generator=g), face_seq=torch.randn(n, 2, 8, generator=g),
                     audio_seq_valid=torch.ones(n, 2, dtype=torch.bool), face_seq_valid=torch.ones(n, 2, dtype=torch.bool))
        batch = EmbeddingBatch(**f, has_audio=torch.ones(n, dtype=torch.bool), has_face=torch.ones(n, dtype=torch.bool))
        cfg = TrainConfig(epochs=1, batch_size=16, device="cpu", mask_prob=0.3, head_options=HEADS.get(head, {}))
        Count.n = 0
        with Count():
            fit_head(batch, torch.arange(n) % 8, head, cfg, progress=False)
        counts.append(Count.n)
    return (counts[1] - counts[0]) / steps


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", help="write the results here")
    a = ap.parse_args(argv)
    import torch
    torch.set_num_threads(1)
    res = {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
                      f"load {os.getloadavg()[0]:.1f}", "steps": a.steps, "repeats": a.repeats, "heads": {}}
    print("| head | host CPU-ms per step | VoxCeleb2-dev epoch floor at batch 256 | device syncs per step |\n"
          "| --- | --- | --- | --- |")
    for head in HEADS:
        ms = host_ms_per_step(head, a.steps, a.repeats)
        sy = syncs_per_step(head)
        res["heads"][head] = {"host_ms_per_step": round(ms, 3), "vox2_epoch_floor_s": round(ms * VOX2_STEPS / 1e3, 1),
                              "device_syncs_per_step": sy}
        print(f"| {head} | {ms:.2f} | {ms * VOX2_STEPS / 1e3:.1f} s | {sy:g} |")
    res["heads"]["dca"] = {"device_syncs_per_step": syncs_per_step("dca")}
    print(f"| dca | - | - | {res['heads']['dca']['device_syncs_per_step']:g} (+ the BiLSTM's lengths) |")
    save_json(a.json, res)
    return res


if __name__ == "__main__":
    main()

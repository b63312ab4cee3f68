"""The fusion section of the prepared GPU check (``benchmarks/gpu_check.py``): one epoch of ``mlp``
(batch 256 and 1024) and ``dca`` at full VoxCeleb2-dev scale, on embeddings generated on the device."""

from __future__ import annotations

import time

from benchmarks.gpu_check_report import Busy


def synthetic_batch(n: int, n_ids: int, steps: int, seq: bool, device: str, seed: int = 0):
    """``train_speed.make_cache``'s embeddings (identity prototype + clip noise + 0.5 step noise,
    float16, 1 % without audio, 5 % without face), generated on ``device`` instead of read from Zarr."""
    import torch

    from fusion.batch import EmbeddingBatch
    g = torch.Generator(device=device).manual_seed(seed)
    labels = torch.sort(torch.randint(0, n_ids, (n,), generator=g, device=device)).values
    labels[:n_ids] = torch.arange(n_ids, device=device)
    labels = torch.sort(labels).values
    fields = {}
    for mod, dim in (("audio", 192), ("face", 512)):
        proto = torch.randn(n_ids, dim, generator=g, device=device)
        clip = proto[labels] + torch.randn(n, dim, generator=g, device=device)
        fields[f"{mod}_clip"] = clip.half()
        if seq:
            x = torch.empty(n, steps, dim, dtype=torch.float16, device=device)
            for lo in range(0, n, 65536):     # chunks: float32 temporaries stay small
                hi = min(n, lo + 65536)
                x[lo:hi] = (clip[lo:hi, None] + 0.5 * torch.randn(hi - lo, steps, dim, generator=g,
                                                                   device=device)).half()
            fields[f"{mod}_seq"] = x
            fields[f"{mod}_seq_valid"] = torch.ones(n, steps, dtype=torch.bool, device=device)
        del clip
    has_a = torch.rand(n, generator=g, device=device) > 0.01
    has_v = torch.rand(n, generator=g, device=device) > 0.05
    return EmbeddingBatch(**fields, has_audio=has_a | ~has_v, has_face=has_v), labels


def sec_fusion(ctx) -> dict:
    import torch

    from fusion.registry import get_head
    from fusion.trainer import TrainConfig
    from pipeline.train.run import train_head
    out = {"clips": ctx.s.fusion_clips, "identities": ctx.s.fusion_ids, "steps": ctx.s.fusion_steps}
    # mlp at batch 1024 too: at 256 the host's ~1.5 ms per step (benchmarks/train_step_speed.py) bounds a
    # 4,266-step epoch at ~6 s whatever the GPU; a bigger batch shows what the device does when it is not
    for head, sizes in (("mlp", (256, 1024)), ("dca", (256,))):
        t0 = time.perf_counter()
        batch, labels = synthetic_batch(ctx.s.fusion_clips, ctx.s.fusion_ids, ctx.s.fusion_steps,
                                        get_head(head).needs_sequences, ctx.device)
        make_s = time.perf_counter() - t0                     # once per head: both batch sizes train on it
        for bs in sizes:
            cfg = TrainConfig(epochs=1, batch_size=min(bs, ctx.s.fusion_clips // 2), device=ctx.device,
                              mask_prob=0.3)
            warm = torch.arange(min(512, len(labels) // 2), device=batch.has_audio.device)
            train_head((batch[warm], labels[warm]), head, cfg, progress=False)      # warm-up, as train_speed
            if ctx.cuda:
                torch.cuda.reset_peak_memory_stats()
            with Busy(ctx.cuda) as b:
                _, hist = train_head((batch, labels), head, cfg, progress=False)
            out[head if bs == 256 else f"{head}_b{bs}"] = {
                "epoch_s": hist[0]["seconds"], "clips_per_s": hist[0]["clips_per_s"], "loss": hist[0]["loss"],
                "batch_size": cfg.batch_size, "make_embeddings_s": make_s, "gpu_busy_share": b.share,
                "peak_cuda_gb": torch.cuda.max_memory_allocated() / 1e9 if ctx.cuda else None}
        del batch, labels
        if ctx.cuda:
            torch.cuda.empty_cache()
    return out

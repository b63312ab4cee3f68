"""Where the backbones' GPU time goes (issue 15): ``ecapa_tdnn`` (C=1024) and ``iresnet100`` as
``extract`` runs them (bf16 autocast, random weights: the same FLOPs as trained ones), on made-up
inputs shaped like VoxCeleb2's (batches of 128 utterances of ``--seconds``, of 1,024 segments of
1 s, of 1,024 face crops), each timed with ``torch.backends.cudnn.benchmark`` off (extract's
setting) and on, plus a ``torch.profiler`` table of the kernels of one audio batch.

    python benchmarks/gpu_profile_backbones.py --out DIR      # on a CUDA box; writes gpu_profile.json

Prints, per input: ms per batch, clips/s, TFLOP/s achieved (FLOPs counted by
``torch.utils.flop_counter``). ``make gpu-check`` (``benchmarks/gpu_check.py``) runs it after
its own sections when time is left. On a box without CUDA (``--dry``): tiny sizes on the CPU.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def _timed(fn, repeats: int, cuda: bool) -> float:
    import torch
    fn()                                    # warm-up: kernels, autotuning, allocator
    if cuda:
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(repeats):
        fn()
    if cuda:
        torch.cuda.synchronize()
    return (time.perf_counter() - t0) / repeats


def _flops(fn) -> float:
    from torch.utils.flop_counter import FlopCounterMode
    with FlopCounterMode(display=False) as fc:
        fn()
    return float(fc.get_total_flops())


def profile(device: str, dry: bool, seconds: float = 8.0, repeats: int = 5, batch: int | None = None) -> dict:
    import torch

    from extractors.registry import load_backbone
    cuda = device.startswith("cuda")
    audio_name, face_name = ("ge2e_lstm", "iresnet18") if dry else ("ecapa_tdnn", "iresnet100")
    B = batch or (4 if dry else 128)
    audio, _ = load_backbone(audio_name, "random", device=device)
    face, info = load_backbone(face_name, "random", device=device)
    crop = int(info["spec"]["crop"])
    g = torch.Generator(device=device).manual_seed(0)
    T = int(seconds * 16000)
    inputs = {
        "audio_utterances": (audio, (0.1 * torch.randn(B, T, generator=g, device=device),
                                     torch.full((B,), T, dtype=torch.int64))),
        "audio_segments_1s": (audio, (0.1 * torch.randn(B * 8, 16000, generator=g, device=device),
                                      torch.full((B * 8,), 16000, dtype=torch.int64))),
        "face_crops": (face, (torch.rand(B * 8, 3, crop, crop, generator=g, device=device)
                              .contiguous(memory_format=torch.channels_last),)),
    }
    autocast = torch.autocast(device_type="cuda" if cuda else "cpu", dtype=torch.bfloat16)
    out: dict = {"device": torch.cuda.get_device_name(0) if cuda else "cpu", "batch": B, "seconds": seconds,
                 "audio": audio_name, "face": face_name}
    for name, (model, args) in inputs.items():
        def call(model=model, args=args):
            with torch.inference_mode(), autocast:
                return model(*args)
        row = {"flops": _flops(call)}
        for bench in (False, True):
            torch.backends.cudnn.benchmark = bench
            s = _timed(call, 1 if dry else repeats, cuda)
            row[f"cudnn_benchmark_{'on' if bench else 'off'}"] = {
                "ms_per_batch": 1e3 * s, "items_per_s": len(args[0]) / s, "tflops": row["flops"] / s / 1e12}
        torch.backends.cudnn.benchmark = False
        out[name] = row
        print(f"{name}: " + ", ".join(f"{k} {v['ms_per_batch']:.1f} ms ({v['tflops']:.1f} TFLOP/s)"
                                      for k, v in row.items() if isinstance(v, dict)), flush=True)
    if cuda:
        from torch.profiler import ProfilerActivity
        from torch.profiler import profile as tprofile
        model, args = inputs["audio_utterances"]
        with tprofile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            with torch.inference_mode(), autocast:
                model(*args)
            torch.cuda.synchronize()
        table = prof.key_averages().table(sort_by="cuda_time_total", row_limit=25, max_name_column_width=70)
        out["audio_kernels"] = table
        print(table, flush=True)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=REPO / "bench_out" / "gpu_profile")
    ap.add_argument("--dry", action="store_true", help="tiny sizes on the CPU (the default without CUDA)")
    args = ap.parse_args(argv)
    import torch
    cuda = torch.cuda.is_available() and not args.dry
    res = profile("cuda" if cuda else "cpu", dry=not cuda, seconds=8.0 if cuda else 1.0)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu_profile.json").write_text(json.dumps(res, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Stage-1 throughput: ``avfuse extract`` (run_extract) against the naive loop, same run.

Naive loop (what a first script does), per clip: decode audio and faces, then batch-1 fp32
forwards (the whole utterance, each of the S segments, each of the F frames one at a
time), then write that clip's row into a Zarr group (row-sized chunks). Ours: decode
worker processes ahead of the backbones, duration-bucketed padded batches, segments
batched as (B*S, T/S), F frames of B clips per face batch, ``inference_mode``, (CUDA:
bf16 autocast, channels_last, pinned memory), whole shards written at once.

Both compute the same embeddings (checked: max |diff| printed). The naive loop runs on
the first ``--naive-clips`` clips (it is a rate); ours on the whole corpus.

    python benchmarks/extract_throughput.py                       # CPU, ge2e_lstm + iresnet18
    python benchmarks/extract_throughput.py --device cuda --backbones ecapa_tdnn,iresnet100 \
        --clips 2000 --num-workers 12 --naive-clips 100

Prints a table and writes the numbers as JSON (``--json``, default next to this file).
VoxCeleb2 dev projection: 1,092,009 clips, 2,360 h (mean clip 7.78 s); audio compute and
decoding scale with clip length, face compute per clip (F frames whatever the length).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import save_json, scratch_dir  # noqa: E402

VOX2_CLIPS = 1_092_009
VOX2_HOURS = 2360.0


def naive_loop(records, cfg, models, out_dir: Path) -> dict:
    """Per clip: decode, batch-1 fp32 forwards, write one row. Returns timings and the rows."""
    import torch
    import zarr

    from extractors.batching import segment_plan, tile_to_length
    from extractors.media.decode import load_audio, load_faces
    dev = cfg.device
    S, F = cfg.segments, cfg.frames
    ai, fi = models.audio_info, models.face_info
    sr = ai["spec"]["sample_rate"]
    mean = torch.tensor(fi["spec"]["mean"], device=dev).view(1, 3, 1, 1)
    std = torch.tensor(fi["spec"]["std"], device=dev).view(1, 3, 1, 1)
    n = len(records)
    root = zarr.open_group(str(out_dir), mode="w")
    z = {"audio/clip": root.create_array("audio_clip", shape=(n, ai["embedding_dim"]), chunks=(1, ai["embedding_dim"]), dtype="float16"),
         "audio/segments": root.create_array("audio_segments", shape=(n, S, ai["embedding_dim"]), chunks=(1, S, ai["embedding_dim"]), dtype="float16"),
         "face/frames": root.create_array("face_frames", shape=(n, F, fi["embedding_dim"]), chunks=(1, F, fi["embedding_dim"]), dtype="float16"),
         "face/clip": root.create_array("face_clip", shape=(n, fi["embedding_dim"]), chunks=(1, fi["embedding_dim"]), dtype="float16")}
    t = {"decode": 0.0, "compute": 0.0, "write": 0.0}
    rows = {k: [] for k in z}
    min_samples = int(round(cfg.min_segment_seconds * sr))
    t_all = time.perf_counter()
    for i, r in enumerate(records):
        t0 = time.perf_counter()
        wave = load_audio(r.audio_path or r.video_path, sr)
        faces, valid = load_faces(r.video_path, r.frames_dir, n_frames=F, size=fi["spec"]["crop"])
        t1 = time.perf_counter()
        with torch.no_grad():
            plan = segment_plan(len(wave), S, min_samples)
            w = tile_to_length(wave, plan.tiled_length) if plan.tiled_length else wave

            def emb(x: np.ndarray) -> np.ndarray:
                e = models.audio(torch.from_numpy(np.ascontiguousarray(x))[None].to(dev),
                                 torch.tensor([len(x)], device=dev))
                return e[0].cpu().numpy()
            clip = emb(w)
            parts = np.stack([emb(w[a:b]) for a, b in plan.parts])
            segs = parts[plan.slot_part]
            x = (torch.from_numpy(faces).to(dev).float() / 255 - mean) / std
            frames = np.stack([models.face(x[f:f + 1])[0].cpu().numpy() for f in range(F)])
            fclip = frames[valid].mean(0)
        t2 = time.perf_counter()
        for k, v in (("audio/clip", clip), ("audio/segments", segs), ("face/frames", frames), ("face/clip", fclip)):
            z[k][i] = v.astype(np.float16)
            rows[k].append(v)
        t3 = time.perf_counter()
        t["decode"] += t1 - t0
        t["compute"] += t2 - t1
        t["write"] += t3 - t2
    t["total"] = time.perf_counter() - t_all
    return {"seconds": t, "clips": n, "clips_per_s": n / t["total"], "rows": {k: np.stack(v) for k, v in rows.items()}}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--corpus", type=Path, default=None, help="existing toy corpus dir (else synthesised in a tmp dir)")
    ap.add_argument("--clips", type=int, default=96, help="clips to synthesise (x4 per speaker)")
    ap.add_argument("--clip-seconds", type=float, default=3.0)
    ap.add_argument("--naive-clips", type=int, default=24)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--backbones", default="ge2e_lstm,iresnet18", help="AUDIO,FACE backbone names")
    ap.add_argument("--audio-weights", default=None, help="default: pretrained for ge2e_lstm, else random")
    ap.add_argument("--face-weights", default="random")
    ap.add_argument("--batch-size", type=int, default=None, help="default 8 (cpu) / 64 (cuda)")
    ap.add_argument("--num-workers", type=int, default=None, help="default min(4, cores) (cpu) / cores-2 (cuda)")
    ap.add_argument("--shard-size", type=int, default=64)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (both runs); default torch's")
    ap.add_argument("--json", type=Path, default=Path(__file__).with_suffix(".json"))
    args = ap.parse_args(argv)

    import torch

    from data_manifests.manifest import read_manifest
    from pipeline.cache.reader import open_cache
    from pipeline.extract.config import ExtractConfig
    from pipeline.extract.models import get_models
    from pipeline.extract.run import run_extract
    if args.threads:
        torch.set_num_threads(args.threads)
    cores = os.cpu_count() or 1
    cuda = args.device.startswith("cuda")
    audio_name, face_name = args.backbones.split(",")
    aw = args.audio_weights or ("pretrained" if audio_name == "ge2e_lstm" else "random")
    with scratch_dir("avfuse-bench-") as tmp:
        corpus = args.corpus
        t_synth = 0.0
        if corpus is None or not (corpus / "manifest.jsonl").exists():
            from data_manifests.synth.corpus import synthesize
            corpus = corpus or tmp / "toy"
            speakers = max(6, math.ceil(args.clips / 4))
            t0 = time.perf_counter()
            synthesize(corpus, speakers=speakers, videos_per_speaker=2, clips_per_video=2, seed=0,
                       clip_seconds=args.clip_seconds, workers=min(cores, 16), progress=True)
            t_synth = time.perf_counter() - t0
        records = read_manifest(corpus / "manifest.jsonl")
        mean_len = float(np.mean([r.duration for r in records]))
        cfg = ExtractConfig(audio_backbone=audio_name, audio_weights=aw, face_backbone=face_name,
                            face_weights=args.face_weights, device=args.device, shard_size=args.shard_size,
                            batch_size=args.batch_size or (64 if cuda else 8),
                            num_workers=args.num_workers if args.num_workers is not None else
                            (max(1, cores - 2) if cuda else min(4, cores)))
        from pipeline.extract.models import resolve_config
        cfg = resolve_config(cfg)  # named weights -> file, and their preprocessing (ge2e 'pretrained': VAD)
        models = get_models(cfg)  # loaded once, outside both timings
        with torch.inference_mode():  # warm-up (allocators, cudnn/oneDNN primitives)
            models.audio(torch.zeros(2, 16000, device=args.device), torch.tensor([16000, 8000], device=args.device))
            models.face(torch.zeros(2, 3, models.face_info["spec"]["crop"], models.face_info["spec"]["crop"],
                                    device=args.device))

        sub = records[: args.naive_clips]
        print(f"naive loop on {len(sub)} clips ...", file=sys.stderr)
        naive = naive_loop(sub, cfg, models, tmp / "naive.zarr")

        print(f"avfuse extract on {len(records)} clips ...", file=sys.stderr)
        summary = run_extract(corpus / "manifest.jsonl", tmp / "ours.zarr", cfg, progress=True)
        st = summary.stats
        with open_cache(tmp / "ours.zarr") as c:
            diffs = {k: float(np.abs(c.to_numpy(k, rows=range(len(sub))) - v).max() / np.abs(v).max())
                     for k, v in naive["rows"].items()}

        ours_cps = summary.clips_per_s
        ratio = ours_cps / naive["clips_per_s"]
        # projection for VoxCeleb2 dev: audio compute and decode scale with length, faces per clip
        scale = (VOX2_HOURS * 3600 / VOX2_CLIPS) / mean_len
        per_clip = {"audio": st.audio_seconds / st.clips, "face": st.face_seconds / st.clips,
                    "decode_cpu": st.decode_seconds / st.clips}
        compute_per_clip = per_clip["face"] + per_clip["audio"] * scale
        decode_wall_per_clip = per_clip["decode_cpu"] * scale / max(1, cfg.num_workers)
        proj_h = VOX2_CLIPS * max(compute_per_clip, decode_wall_per_clip) / 3600
        out = {
            "machine": {"device": args.device, "cpu_cores": cores, "torch_threads": torch.get_num_threads(),
                        "gpu": torch.cuda.get_device_name() if cuda else None,
                        "load_avg_1min": os.getloadavg()[0]},
            "backbones": {"audio": audio_name, "audio_weights": aw, "face": face_name, "face_weights": args.face_weights},
            "corpus": {"clips": len(records), "mean_clip_seconds": round(mean_len, 3), "synth_seconds": round(t_synth, 1)},
            "config": {"batch_size": cfg.batch_size, "num_workers": cfg.num_workers, "shard_size": cfg.shard_size,
                       "segments": cfg.segments, "frames": cfg.frames, "precision": cfg.compute_precision()},
            "naive": {"clips": naive["clips"], "clips_per_s": round(naive["clips_per_s"], 3),
                      "seconds": {k: round(v, 2) for k, v in naive["seconds"].items()}},
            "ours": {"clips": summary.clips_computed, "clips_per_s": round(ours_cps, 3), "seconds": round(summary.seconds, 2),
                     "decode_cpu_seconds_summed": round(st.decode_seconds, 2), "compute_seconds": round(st.compute_seconds, 2),
                     "audio_seconds": round(st.audio_seconds, 2), "face_seconds": round(st.face_seconds, 2),
                     "wait_for_decode_seconds": round(st.wait_seconds, 2)},
            "ratio": round(ratio, 2),
            "max_rel_diff_naive_vs_ours": diffs,
            "vox2_dev_projection_hours": round(proj_h, 1),
        }
        print(f"\nmachine: {args.device}, {cores} CPU cores, torch threads {torch.get_num_threads()}, "
              f"load avg {out['machine']['load_avg_1min']:.1f}")
        print(f"backbones: {audio_name} ({aw}) + {face_name} ({args.face_weights}); corpus {len(records)} clips, "
              f"mean {mean_len:.2f} s; S={cfg.segments}, F={cfg.frames}")
        print(f"{'':8} {'clips':>6} {'clips/s':>8} {'decode s':>9} {'compute s':>10} {'write/wait s':>13}")
        ns = naive["seconds"]
        print(f"{'naive':8} {naive['clips']:>6} {naive['clips_per_s']:>8.3f} {ns['decode']:>9.1f} {ns['compute']:>10.1f} "
              f"{ns['write']:>13.1f}")
        print(f"{'ours':8} {summary.clips_computed:>6} {ours_cps:>8.3f} {st.decode_seconds:>9.1f} "
              f"{st.compute_seconds:>10.1f} {st.wait_seconds:>13.1f}   (decode = CPU s summed over "
              f"{cfg.num_workers} workers, overlapped; wait = main thread idle waiting for decode)")
        print(f"ratio ours / naive: {ratio:.2f}x   (compute split: audio {st.audio_seconds:.1f} s, "
              f"face {st.face_seconds:.1f} s)")
        print("same embeddings: max |naive - ours| / max |naive| (ours stored float16) = "
              + ", ".join(f"{k} {v:.1e}" for k, v in diffs.items()))
        print(f"VoxCeleb2 dev projection ({VOX2_CLIPS:,} clips, {VOX2_HOURS:,.0f} h, mean {mean_len * scale:.2f} s "
              f"vs toy {mean_len:.2f} s): {proj_h:,.1f} h on this machine")
        save_json(args.json, out, indent=2)
        return out


if __name__ == "__main__":
    main()

"""A tiny synthetic corpus + real embedding cache shared by test_ablate and test_analyze.

Built once per pytest session under the session's base temp folder (the second
module reuses it; a ``done`` marker is written last): 8 speakers x 2 videos x 2
clips of real synthesised media (``data_manifests.synth``), extracted with the real
ge2e_lstm weights and a seeded random iresnet18, 4 segments / 4 frames per clip.
"""

from __future__ import annotations

from pathlib import Path

SEGMENTS = 4


def build_toy(base: Path) -> dict:
    """``{"corpus", "cache", "test", "dev"}`` paths of the toy corpus under ``base``."""
    import extractors.audio.ge2e as ge2e
    from data_manifests.synth import synthesize
    from pipeline.extract import ExtractConfig, run_extract

    root = Path(base) / "ablate_toy"
    paths = {"corpus": root, "cache": root / "cache.zarr", "test": root / "trials" / "test.txt",
             "dev": root / "trials" / "dev.txt"}
    if (root / "done").is_file():
        return paths
    synthesize(root, layout="vox2", speakers=8, videos_per_speaker=2, clips_per_video=2, seed=0, workers=1,
               progress=False, overwrite=True, clip_seconds=0.8, face_size=64)
    cfg = ExtractConfig(audio_backbone="ge2e_lstm", audio_weights=str(ge2e.pretrained_path()),
                        face_backbone="iresnet18", face_weights="random", num_workers=0, shard_size=64,
                        segments=SEGMENTS, frames=SEGMENTS, min_segment_seconds=0.1, batch_size=16)
    run_extract(root / "manifest.jsonl", paths["cache"], cfg, progress=False, decode_backend="thread",
                overwrite=True)
    (root / "done").write_text("ok\n")
    return paths

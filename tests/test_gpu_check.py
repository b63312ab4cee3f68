"""`benchmarks/gpu_check.py --dry`: the prepared GPU check at tiny sizes on the CPU, run as a user would
(a subprocess), so that the script cannot rot between the days a GPU is lent."""

from __future__ import annotations

import gzip
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("AVFUSE_SHARED", REPO.parent / "shared"))
sys.path.insert(0, str(REPO))

from benchmarks.gpu_check import DURATION_QUANTILES, QUANTILE_LEVELS, durations  # noqa: E402
from benchmarks.gpu_check_report import KEYS, VOX2_MEAN_S  # noqa: E402

ROWS = ("media", "decode audio + faces", "H.264 on NVDEC vs CPU decoder", "hand-off to the main process, faces 112",
        "hand-off to the main process, faces 224", "decode faces, resize on device vs cpu",
        "face backbone, resize on device vs cpu", "host->device, face batch 224", "extract end to end",
        "decode alone, extract's procs", "decode alone, one proc per core", "backbones only, bf16", "backbones only, fp32",
        "bf16 vs fp32 cosine, audio/face min", "VoxCeleb2 dev, decode-bound if it scaled",
        "VoxCeleb2 dev, decode measured", "VoxCeleb2 dev, GPU-bound",
        "VoxCeleb2 dev, end to end", "Dask, 1 GPU worker", "fusion epoch mlp", "fusion epoch mlp, batch 1024", "fusion epoch dca", "Vox1-E scoring")


@pytest.fixture(scope="module")
def dry(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu_check")
    env = {**os.environ, "PYTHONPATH": str(REPO), "AVFUSE_SHARED": str(SHARED), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "benchmarks/gpu_check.py", "--dry", "--out", str(out)], cwd=REPO,
                          capture_output=True, text=True, env=env, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads((out / "gpu_check.json").read_text()), (out / "gpu_check.md").read_text(), proc


def test_dry_run_json_has_every_section_with_numbers(dry):
    res, _, _ = dry
    assert set(KEYS) <= set(res) and res["mode"] == "dry" and res["machine"]["gpu"] is None
    assert not [k for k, v in res.items() if isinstance(v, dict) and "error" in v]
    s = res["sizes"]
    assert res["media"]["clips"] == s["clips"] and res["media"]["mp4_kbps"] > 50
    d = res["decode"]
    assert d["clips"] == s["decode_sample"] and 0 < d["audio_cpu_ms_per_clip"] < d["cpu_ms_per_clip"]
    nv = res["nvdec"]                                         # no CUDA here: not measured, and why
    assert nv["available"] is False and nv["reason"] and "cpu_ms_per_clip" not in nv
    h = res["handoff"]
    for size in ("112", "224"):
        assert h[size]["parent_ms"]["ring"] > 0 and h[size]["parent_ms"]["pickle"] > 0
    rz = res["resize"]
    assert rz["clips"] == s["decode_sample"] and rz["decode_cpu_ms"]["device"] > 0
    assert rz["device_clips_per_s"] > 0 and rz["cpu_clips_per_s"] > 0
    assert 0.99 < rz["clip_cos"]["min"] <= 1.0 + 1e-6 and 0.99 < rz["frame_cos"]["min"] <= 1.0 + 1e-6
    for way in ("pageable", "pinned per batch", "reused pinned buffer", "staging (extract now)"):
        assert rz["copy_224"][way]["gb_per_s"] > 0
    e = res["extract"]
    assert e["clips"] == s["clips"] and e["failed_clips"] == 0 and e["clips_per_s"] > 0
    assert e["resize_on"] == "cpu"                            # --resize-on auto on the CPU
    assert e["gpu_busy_share"] is None                        # no GPU: not sampled, not made up
    g = res["gpu_bound"]
    assert g["bf16"]["clips_per_s"] > 0 and g["fp32"]["clips_per_s"] > 0
    for k in ("audio/clip", "face/clip"):
        assert 0.99 < g["bf16_vs_fp32_cosine"][k]["min"] <= g["bf16_vs_fp32_cosine"][k]["mean"] <= 1.0 + 1e-6
    assert res["dask"]["clips"] == s["dask_clips"] and res["dask"]["failed_clips"] == 0
    for head in ("mlp", "mlp_b1024", "dca"):
        f = res["fusion"][head]
        assert f["epoch_s"] > 0 and math.isfinite(f["loss"]) and f["clips_per_s"] > 0
    p = res["projections"]
    assert p["decode_bound_min"] > 0 and p["gpu_bound_min"] > 0 and p["end_to_end_min"] > 0
    assert p["decode_measured_min"] > 0 and "processes" in p["decode_measured_arithmetic"]
    assert "1,092,009 x" in p["decode_bound_arithmetic"]
    if (SHARED / "voxceleb" / "list_test_all.txt.gz").exists():
        sc = res["scoring"]
        assert sc["n_trials"] == s["trials"] and 0 < sc["eer_percent"] < 50
    assert res["seconds"]["total"] > 0


def test_dry_run_markdown_table(dry):
    _, md, proc = dry
    lines = md.splitlines()
    assert lines[0].startswith("# gpu_check (dry, cpu, ")
    table = [ln for ln in lines if ln.startswith("|")]
    assert table[:2] == ["| check | value | unit | note |", "| --- | --- | --- | --- |"]
    assert [ln.split(" | ")[0][2:] for ln in table[2:]] == list(ROWS)
    assert all(ln.count("|") == 5 for ln in table)
    assert "errors:" not in md and md in proc.stdout


def test_duration_table_matches_the_real_vox2_dev_durations(voxceleb_dir):
    with gzip.open(voxceleb_dir / "vox2_dev_duration.txt.gz", "rt") as f:
        secs = np.array(f.read().split()[1::2], dtype=np.float64)
    assert len(secs) == 1_092_009
    assert np.allclose(np.quantile(secs, QUANTILE_LEVELS), DURATION_QUANTILES, atol=0.006)
    assert abs(secs.mean() - VOX2_MEAN_S) < 1e-3
    pool = durations(64, 1e9)
    assert abs(pool.mean() - secs.mean()) < 0.15 and pool.min() >= 3.96


def test_busy_share_reads_one_long_running_nvidia_smi(tmp_path, monkeypatch):
    """The GPU busy share comes from one ``nvidia-smi -lms 200`` process writing to a file (no thread in
    the process that forks decode workers). A stand-in ``nvidia-smi`` on PATH prints what the real one
    prints (one number per line, a cut last line) until it is terminated; no CUDA needed."""
    import time

    from benchmarks.gpu_check_report import Busy, parse_utilisation
    smi = tmp_path / "nvidia-smi"
    smi.write_text("#!/bin/sh\n"
                   'case "$*" in *"-lms 200"*) ;; *) exit 3 ;; esac\n'
                   "printf '30\\n50\\n[N/A]\\n70\\n4'\nexec sleep 30\n")
    smi.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    with Busy(True) as b:
        time.sleep(0.5)
        assert b.proc is not None and b.thread is None
    assert b.proc.returncode is not None                 # terminated, not left running
    assert b.samples == [30.0, 50.0, 70.0, 4.0] and b.share == 0.385
    assert parse_utilisation("12\n\n[N/A]\n7\n") == [12.0, 7.0]
    with Busy(False) as b:
        pass
    assert b.share is None and b.proc is None


@pytest.mark.parametrize("script, result", [("decode_scaling.py", "decode_scaling.json"),
                                            ("gpu_profile_backbones.py", "gpu_profile.json")])
def test_the_other_gpu_scripts_run_dry(tmp_path, script, result):
    """The two scripts the GPU box ran beside gpu_check (decode scaling, where the backbones' time
    goes) run at tiny sizes on the CPU, so they too are ready for the next lent GPU."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, f"benchmarks/{script}", "--dry", "--out", str(tmp_path)], cwd=REPO,
                          capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    res = json.loads((tmp_path / result).read_text())
    if script == "decode_scaling.py":
        rows = res["decode_only"] + [res["ring"], res["pickled"]]
        assert [r["workers"] for r in res["decode_only"]][0] == 1
        assert all(r["clips_per_s"] > 0 and r["clips"] > 0 for r in rows)
        assert all(res["batch"][k]["clips_per_s"] > 0 for k in res["batch"] if k.startswith("batch_"))
    else:
        rows = [res[k] for k in ("audio_utterances", "audio_segments_1s", "face_crops")]
        assert all(r[f"cudnn_benchmark_{b}"]["ms_per_batch"] > 0 for r in rows for b in ("on", "off"))
        assert res["face_crops"]["flops"] > 0

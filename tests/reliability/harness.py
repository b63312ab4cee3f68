"""The running side of the reliability suite, shared by the tests and ``benchmarks/reliability_report.py``:
the suite's extraction settings (as CLI flags and as an ``ExtractConfig``), the fault
corpus and its uninterrupted reference cache, cache reading and comparison, and running
``avfuse`` in a subprocess (exit status, output, peak memory) or in this process.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from data_manifests import read_manifest
from tests.reliability.badmedia import MEDIA_DIR, REPO, Corpus, _few_cases_expect, build_corpus, toy_corpus

#: the extraction settings of the whole suite (random weights: no download, seeded)
BACKBONES = dict(audio_backbone="ge2e_lstm", audio_weights="random",
                 face_backbone="iresnet18", face_weights="random")
SUITE_CFG = dict(segments=4, frames=2, min_segment_seconds=0.5, dtype="float16")


def pretrained_audio() -> bool:
    """Whether ge2e_lstm's real weights (resemblyzer's ``pretrained.pt``) are installed."""
    from pipeline.core import BackboneError
    try:
        from extractors.audio.ge2e import pretrained_path
        return pretrained_path().is_file()
    except BackboneError:
        return False


def cli_flags(shard_size: int, batch_size: int = 4, num_workers: int = 0, audio_weights: str = "random",
              **extra: str) -> list[str]:
    """``avfuse extract`` flags for the suite's settings (CPU, one torch thread, quiet)."""
    flags = ["--audio-backbone", BACKBONES["audio_backbone"], "--audio-weights", audio_weights,
             "--face-backbone", BACKBONES["face_backbone"], "--face-weights", BACKBONES["face_weights"],
             "--segments", str(SUITE_CFG["segments"]), "--frames", str(SUITE_CFG["frames"]),
             "--min-segment-seconds", str(SUITE_CFG["min_segment_seconds"]), "--dtype", SUITE_CFG["dtype"],
             "--shard-size", str(shard_size), "--batch-size", str(batch_size),
             "--num-workers", str(num_workers), "--device", "cpu", "--threads", "1", "--quiet"]
    for k, v in extra.items():
        flags += [f"--{k.replace('_', '-')}", str(v)]
    return flags


def extract_config(shard_size: int, batch_size: int = 4, num_workers: int = 0):
    """The ``ExtractConfig`` equal to ``cli_flags(...)`` (same provenance, same cache)."""
    from pipeline.extract import ExtractConfig
    return ExtractConfig(**BACKBONES, **SUITE_CFG, shard_size=shard_size, batch_size=batch_size,
                         num_workers=num_workers, device="cpu")

FAULT_SHARD_SIZE = 1


def fault_corpus(base: Path, suffix: str = ".zarr") -> tuple[Corpus, Path]:
    """The corpus of the fault scenarios (kills, full disk, damage): the toy corpus plus two
    failing clips (so the failures file is not trivially empty), 14 clips, and its
    uninterrupted reference cache (``extract_config(FAULT_SHARD_SIZE)``, in this process),
    both made once per ``base``; ``suffix`` picks the reference's backend (``.zarr``/``.h5``).
    Returns ``(corpus, reference cache path)``."""
    root = Path(base) / "faults"
    toy = toy_corpus(Path(base))
    if (root / "manifest.jsonl").exists():
        corpus = Corpus(root=root, manifest=root / "manifest.jsonl", toy=read_manifest(toy / "manifest.jsonl"),
                        cases=_few_cases_expect(root / MEDIA_DIR))
    else:
        corpus = build_corpus(root, toy, cases="few")
    ref = root / f"reference{suffix}"
    from pipeline.cache import open_cache
    from pipeline.core import CacheError
    try:
        with open_cache(ref) as c:
            complete = c.is_complete
    except CacheError:
        complete = False
    if not complete:
        import torch

        from pipeline.extract import run_extract
        n = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            run_extract(corpus.manifest, ref, extract_config(FAULT_SHARD_SIZE), progress=False, overwrite=True)
        finally:
            torch.set_num_threads(n)
    return corpus, ref


def fault_flags(**extra) -> list[str]:
    """CLI flags equal to the fault reference's config (one decode worker process)."""
    return cli_flags(shard_size=FAULT_SHARD_SIZE, batch_size=4, num_workers=1, max_failures="1", **extra)

# ============================================================================ checking a cache
def read_cache(path: Path) -> dict:
    """Everything of a complete cache as numpy (stored dtype), its ids and failures file text."""
    from pipeline.cache import open_cache
    with open_cache(path) as c:
        arrays = {n: c.to_numpy(n, dtype=None) for n in c.names}
        ids = c.ids.tolist()
        fails = Path(c.failures_path).read_text() if Path(c.failures_path).exists() else None
        return {"ids": ids, "arrays": arrays, "failures": fails, "complete": c.is_complete,
                "done": sorted(c.done_shards()), "n_shards": c.n_shards}


def compare_caches(ref: Path, other: Path) -> list[str]:
    """Differences between two caches (empty = the same): ids (order, no duplicate, none
    missing), every array (bools equal, floats allclose), failures file text."""
    from pipeline.core import CacheError
    a = read_cache(ref)
    try:
        b = read_cache(other)
    except CacheError as e:
        return [f"{other} cannot be read whole: {e.message}"]
    out = []
    if not b["complete"]:
        out.append(f"{other}: {len(b['done'])}/{b['n_shards']} shards done")
    if a["ids"] != b["ids"]:
        out.append(f"ids differ: {len(a['ids'])} vs {len(b['ids'])} rows, "
                   f"{len(set(b['ids']))} unique, missing {sorted(set(a['ids']) - set(b['ids']))[:3]}")
    for name in sorted(set(a["arrays"]) | set(b["arrays"])):
        x, y = a["arrays"].get(name), b["arrays"].get(name)
        if x is None or y is None or x.shape != y.shape:
            out.append(f"{name}: shape {None if x is None else x.shape} vs {None if y is None else y.shape}")
        elif x.dtype == bool:
            if not np.array_equal(x, y):
                out.append(f"{name}: {int((x != y).sum())} flags differ")
        elif not np.allclose(x.astype(np.float32), y.astype(np.float32), rtol=2e-3, atol=2e-3):
            out.append(f"{name}: max abs diff {np.abs(x.astype(np.float32) - y.astype(np.float32)).max():.3g}")
    if a["failures"] != b["failures"]:
        out.append("failures.jsonl differs")
    return out


def lost_clips(ref: Path, other: Path) -> int:
    """Clips of ``ref`` that ``other`` lost: ids missing (or unreadable), or present with other
    has_audio/has_face flags or embeddings not allclose to the reference's."""
    from pipeline.core import CacheError
    a = read_cache(ref)
    try:
        b = read_cache(other)
    except CacheError:
        return len(a["ids"])
    row = {cid: i for i, cid in enumerate(b["ids"])}
    lost = 0
    for i, cid in enumerate(a["ids"]):
        j = row.get(cid)
        if j is None:
            lost += 1
            continue
        for name, x in a["arrays"].items():
            y = b["arrays"][name][j].astype(np.float32)
            if not np.allclose(x[i].astype(np.float32), y, rtol=2e-3, atol=2e-3):
                lost += 1
                break
    return lost


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))

# ============================================================================ subprocesses
@dataclass
class Proc:
    rc: int
    stdout: str
    stderr: str
    seconds: float
    maxrss_mib: float


def avfuse_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "pipeline", *args]


def child_env(**extra: str) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONPATH": str(REPO),
           "PYTHONUNBUFFERED": "1"}
    env.update(extra)
    return env


def run_avfuse(*args: str, timeout: float = 600, cmd: list[str] | None = None, **popen) -> Proc:
    """Run ``python -m pipeline ARGS`` (or ``cmd``) to the end; ``maxrss_mib`` = the peak
    resident memory of that process (``wait4``; its own children not included)."""
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd or avfuse_cmd(*args), cwd=REPO, env=popen.pop("env", child_env()),
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, **popen)
    import threading
    bufs = {}

    def pump(name, stream):
        bufs[name] = stream.read()
    ts = [threading.Thread(target=pump, args=(n, s)) for n, s in (("out", p.stdout), ("err", p.stderr))]
    for t in ts:
        t.start()
    deadline = time.time() + timeout
    while True:
        pid, status, ru = os.wait4(p.pid, os.WNOHANG)
        if pid:
            break
        if time.time() > deadline:
            p.kill()
            pid, status, ru = os.wait4(p.pid, 0)
            break
        time.sleep(0.05)
    p.returncode = os.waitstatus_to_exitcode(status)
    for t in ts:
        t.join()
    return Proc(p.returncode, bufs["out"].decode(errors="replace"), bufs["err"].decode(errors="replace"),
                time.perf_counter() - t0, ru.ru_maxrss / 1024)


def avfuse_here(*args: str) -> Proc:
    """Run ``avfuse ARGS`` in this process through ``pipeline.cli.main`` (the same code as the
    ``avfuse`` script, without a new interpreter and torch import), capturing stdout and
    stderr. An exception that escapes ``main`` is written to stderr as a traceback with
    exit status 1, as the interpreter would."""
    import contextlib
    import io
    import traceback
    import warnings

    from pipeline.cli import main
    out, err = io.StringIO(), io.StringIO()
    t0 = time.perf_counter()
    rc = 0
    # record warnings ourselves (pytest's own recorder would swallow them), print them as Python does
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), \
            warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            main(list(args))
        except SystemExit as e:
            rc = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        except Exception:  # noqa: BLE001 - what the interpreter would print
            traceback.print_exc(file=err)
            rc = 1
    for w in caught:
        err.write(warnings.formatwarning(w.message, w.category, w.filename, w.lineno))
    return Proc(rc, out.getvalue(), err.getvalue(), time.perf_counter() - t0, 0.0)


def one_line_error(proc: Proc) -> str | None:
    """Why ``proc``'s stderr is not a clean one-line avfuse error (None when it is): a
    non-zero exit, no traceback, exactly one ``avfuse: error:`` line and it is the last
    line (a message with embedded newlines is not one line)."""
    if proc.rc == 0:
        return "exit status 0"
    if "Traceback" in proc.stderr:
        return "traceback on stderr:\n" + proc.stderr[-1500:]
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    errs = [ln for ln in lines if ln.startswith("avfuse: error:")]
    if len(errs) != 1:
        return f"expected one 'avfuse: error:' line, stderr:\n{proc.stderr[-1500:]}"
    if lines[-1] != errs[0]:
        return f"the error message runs over {len(lines) - lines.index(errs[0])} lines:\n{proc.stderr[-1500:]}"
    return None

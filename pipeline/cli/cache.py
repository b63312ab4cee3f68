"""``avfuse cache``: inspect, verify or export an embedding cache."""

from __future__ import annotations

import json
import os
import sys
import uuid
import zipfile
from pathlib import Path

import click
import numpy as np

from pipeline.cache.reader import EmbeddingCache, open_cache
from pipeline.cache.writer import open_writer
from pipeline.cli.cache_import import import_cmd
from pipeline.core.errors import CacheError
from pipeline.core.fsio import output_error, output_mode, temp_prefix, writer_tag
from pipeline.core.outputs import as_output_error, check_output
from pipeline.core.progress import progress as progress_


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def export_npz(cache: EmbeddingCache, out: str | Path, *, allow_incomplete: bool = False,
               progress: bool = True) -> Path:
    """Write ``ids``, ``speakers``, ``splits`` and every array (floats as float32, bools as
    bool) to an uncompressed ``.npz``, streaming shard by shard (memory = one shard),
    atomically (temp + rename). An incomplete cache is refused unless
    ``allow_incomplete``: not-done rows are then zero and a ``done`` bool array says which."""
    out = Path(out)
    cache.refresh()
    if not cache.is_complete and not allow_incomplete:
        raise CacheError(f"cache is incomplete: {len(cache.done_shards())} of {cache.n_shards} shards "
                         f"done", path=cache.path,
                         hint="finish it with `avfuse extract`, or pass --allow-incomplete")
    with as_output_error(out):
        out.parent.mkdir(parents=True, exist_ok=True)
        mode = output_mode(out)
    tmp = out.with_name(f"{temp_prefix(out)}{writer_tag()}-{uuid.uuid4().hex[:8]}.tmp")
    bar = progress_(total=len(cache.names) * cache.n_shards, desc="exporting", unit="chunk", enabled=progress,
                   leave=True)
    try:
        _write_npz(cache, tmp, allow_incomplete, bar)
        with open(tmp, "rb+") as f:
            os.fchmod(f.fileno(), mode)
            os.fsync(f.fileno())
        os.replace(tmp, out)
    except OSError as e:
        raise output_error(e, out) from None
    finally:
        bar.close()
        tmp.unlink(missing_ok=True)
    return out


def _write_npz(cache: EmbeddingCache, tmp: Path, allow_incomplete: bool, bar) -> None:
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
        meta = {"ids": cache.ids, "speakers": cache.speakers, "splits": cache.splits}
        if allow_incomplete:
            meta["done"] = cache.done_mask()
        for key, arr in meta.items():
            with zf.open(key + ".npy", "w", force_zip64=True) as f:
                np.lib.format.write_array(f, np.asarray(arr), allow_pickle=False)
        for name in cache.names:
            spec = cache.specs[name]
            dt = np.dtype(bool) if spec.dtype == "bool" else np.dtype(np.float32)
            with zf.open(name + ".npy", "w", force_zip64=True) as f:
                np.lib.format.write_array_header_1_0(
                    f, {"descr": np.lib.format.dtype_to_descr(dt), "fortran_order": False,
                        "shape": spec.shape})
                for k in range(cache.n_shards):
                    s = cache.shard_slice(k)
                    if k in cache.done_shards():
                        block = cache.read_shard(name, k).astype(dt, copy=False)
                    else:
                        block = np.zeros((s.stop - s.start, *spec.shape[1:]), dtype=dt)
                    f.write(np.ascontiguousarray(block).tobytes())
                    bar.update(1)


@click.group("cache", context_settings={"help_option_names": ["-h", "--help"]})
def cache_group() -> None:
    """Inspect, verify or export an embedding cache (C.zarr or C.h5).

    \b
    avfuse cache info C.zarr [--json]     rows, shards, arrays, sizes, provenance, failures
    avfuse cache verify C.zarr            NaN/Inf, zero norms, damage; exit 1 on any problem
    avfuse cache export C.zarr --out emb.npz       (or --format kaldi --out DIR)
    avfuse cache import --out C.zarr --audio xvector.scp --face faces.npz
    """


@cache_group.command("info")
@click.argument("cache", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the summary as one JSON object.")
def info_cmd(cache: Path, as_json: bool) -> None:
    """Summarise CACHE: rows, done shards, array shapes/dtypes/sizes, provenance, failures."""
    c = open_cache(cache)
    info = c.info()
    if as_json:
        click.echo(json.dumps(info, indent=2, sort_keys=True))
        return
    state = "complete" if info["complete"] else "INCOMPLETE (rerun `avfuse extract` to resume)"
    click.echo(f"cache        {info['path']} ({info['backend']}, {_size(info['bytes_on_disk'])} on disk)")
    click.echo(f"rows         {info['rows']} in {info['shards_total']} shards of {info['shard_size']}: "
               f"{info['shards_done']} done, {state}")
    if info.get("shards_staged_not_merged"):
        click.echo(f"staged       {info['shards_staged_not_merged']} shards in parts, not yet merged "
                   f"into the .h5 (readable; merged at the end of extraction)")
    click.echo(f"dtype        {info['dtype']}")
    click.echo(f"fingerprint  {info['fingerprint']}")
    click.echo("splits       " + ", ".join(f"{k}: {v}" for k, v in sorted(info["splits"].items())))
    click.echo("arrays")
    for name, a in info["arrays"].items():
        shape = " x ".join(str(x) for x in a["shape"])
        click.echo(f"  {name:<20} {shape:<18} {a['dtype']:<8} {_size(a['bytes_on_disk']):>10}")
    click.echo("provenance")
    for k, v in info["provenance_summary"].items():
        text = " ".join(f"{a}={b}" for a, b in v.items()) if isinstance(v, dict) else json.dumps(v)
        click.echo(f"  {k}: {text}")
    f = info["failures"]
    detail = ", ".join(f"{k} {v}" for k, v in sorted(f["by_stage"].items()))
    click.echo(f"failures     {f['count']} ({detail or 'none'}) -> {info['failures_file']}")
    if info["lock"] is not None:
        lk = info["lock"]
        click.echo(f"lock         held by pid {lk.get('pid')} on {lk.get('host')} since {lk.get('since')}")


@cache_group.command("verify")
@click.argument("cache", type=click.Path(path_type=Path))
@click.option("--invalidate-damaged", is_flag=True,
              help="Mark shards with damaged, missing or unreadable data as not done, so the next "
                   "`avfuse extract` recomputes them (takes the cache lock).")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
def verify_cmd(cache: Path, invalidate_damaged: bool, quiet: bool) -> None:
    """Check CACHE: header fingerprints, duplicate ids, shards not done, damaged or
    unreadable chunks (checksums), NaN/Inf values, zero-norm vectors where a modality
    is present. Prints each problem and exits 1 if there is any, else prints OK, exit 0."""
    c = open_cache(cache)
    problems = c.verify(progress=not quiet)
    if not problems:
        click.echo(f"OK {c.path}: {c.n_rows} rows, {len(c.done_shards())}/{c.n_shards} shards done, "
                   f"checksums match, no NaN/Inf or zero-norm vectors")
        return
    for p in problems:
        click.echo(p)
    click.echo(f"{len(problems)} problem(s) in {c.path}", err=True)
    # sys.exit, not ctx.exit: `avfuse` runs click with standalone_mode=False, which
    # turns ctx.exit(1) into a return value instead of an exit status
    if invalidate_damaged:
        w = open_writer(cache)
        with w.lock():
            bad = w.damaged_shards(progress=not quiet)
            for k in bad:
                w.invalidate_shard(k)
            w.finalize()
        click.echo(f"invalidated {len(bad)} damaged shard(s)"
                   + (f": {', '.join(map(str, bad))}; rerun `avfuse extract` to recompute them"
                      if bad else ""), err=True)
    sys.exit(1)


@cache_group.command("export")
@click.argument("cache", type=click.Path(path_type=Path))
@click.option("--out", "-o", required=True, type=click.Path(path_type=Path),
              help="Output .npz (keys: ids, speakers, splits and each array name, e.g. 'audio/clip'); "
                   "with --format kaldi a folder.")
@click.option("--format", "fmt", type=click.Choice(["npz", "kaldi"]), default="npz", show_default=True,
              help="kaldi: OUT/audio_clip.ark+.scp, audio_segments, face_clip, face_frames (float32, rows "
                   "that have the modality, keys as in the trial lists: id10270/5r0dWxy17C8/00001.wav).")
@click.option("--allow-incomplete", is_flag=True,
              help="Export a cache with shards not done: their rows are zero, and a 'done' array marks them.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
def export_cmd(cache: Path, out: Path, fmt: str, allow_incomplete: bool, quiet: bool) -> None:
    """Export CACHE to one .npz for other tools: ids, speakers, splits (str) and every
    array (embeddings as float32, flags as bool), read shard by shard and checksum-checked;
    or (--format kaldi) to Kaldi ark + scp per array, as WeSpeaker / 3D-Speaker / Kaldi read them."""
    check_output(out, [cache], folder=(fmt == "kaldi"))
    c = open_cache(cache)
    if fmt == "kaldi":
        from pipeline.cache.importer import export_kaldi
        files = export_kaldi(c, out, allow_incomplete=allow_incomplete, progress=not quiet)
        click.echo(f"wrote {len(files)} files to {out}: {', '.join(f.name for f in files)}")
        return
    path = export_npz(c, out, allow_incomplete=allow_incomplete, progress=not quiet)
    click.echo(f"wrote {path} ({c.n_rows} rows, {len(c.names)} arrays, {_size(path.stat().st_size)})")


cache_group.add_command(import_cmd)

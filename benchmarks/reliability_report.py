"""Run the reliability scenarios and rewrite ``docs/RELIABILITY.md`` with what happened.

Usage (from the repository root)::

    .venv/bin/python benchmarks/reliability_report.py            # ~5-10 min on 2 CPU cores
    .venv/bin/python benchmarks/reliability_report.py --out /tmp/R.md --work /tmp/rel

It calls the very functions the tests in ``tests/reliability/`` call (bad-media corpus,
kill series, Dask worker kill, checkpoint kills, full disk, damaged store, untrusted
files), so the document states what the code does today, bugs included: each row says
whether the outcome is the expected one.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.reliability_report_parts import BAD, BUGS, OK, _esc, _short, section_untrusted  # noqa: E402
from tests.reliability import badmedia as bm  # noqa: E402
from tests.reliability import extract_kills as ek  # noqa: E402
from tests.reliability import harness as hx  # noqa: E402
from tests.reliability import kill_tools as kt  # noqa: E402
from tests.reliability import test_bad_inputs as tb  # noqa: E402
from tests.reliability import test_damage as td  # noqa: E402
from tests.reliability import test_full_disk as tf  # noqa: E402
from tests.reliability import test_kills as tk  # noqa: E402


def describe(e: bm.Expect) -> str:
    """The expected outcome in words."""
    logged = ", ".join(f"`{s}/{m}`" for s, m in sorted(e.fails))
    have = [m for m, f in (("audio", e.audio), ("face", e.face)) if f]
    parts = []
    if have:
        parts.append("embedded (" + ", ".join(have) + ")")
    if logged:
        parts.append("logged " + logged)
    return "; ".join(parts) or "nothing to embed"


def section_bad_inputs(work: Path, toy: Path, long_seconds: float) -> tuple[list[str], dict]:
    t0 = time.time()
    r = tb.run_bad_inputs(work / "bad", toy, long_seconds=long_seconds)
    secs = time.time() - t0
    out = ["## Bad and odd media", "",
           f"The toy corpus ({len(r.corpus.toy)} valid clips) with {len(r.corpus.cases)} bad or odd clips "
           f"interleaved, extracted by `avfuse extract` (ge2e_lstm {'pretrained' if r.pretrained else 'random'} "
           f"weights + iresnet18 random weights, 4 segments, 2 frames, float16, shards of 8) in one run: "
           f"exit status {r.proc.rc}, {r.proc.seconds:.0f} s, peak resident memory of the process "
           f"**{r.proc.maxrss_mib:.0f} MiB** (with the {long_seconds / 60:g}-minute clips).", ""]
    if r.outcome is None:
        out += ["**The extraction failed:**", "", "```", r.proc.stderr[-3000:], "```", ""]
        return out, {"bad_ok": False, "n_bad": len(r.corpus.cases), "bugs": []}
    rows = {x["clip_id"]: x for x in r.outcome.rows}
    toy_ok = all(not rows[t.clip_id]["problems"] and rows[t.clip_id]["has_audio"] and rows[t.clip_id]["has_face"]
                 for t in r.corpus.toy)
    out += ["| input | what avfuse does | cache: has_audio / has_face | failures.jsonl | as expected |",
            "| --- | --- | --- | --- | --- |",
            f"| {len(r.corpus.toy)} valid toy clips (m4a + mp4) | embedded | all True / True | none | "
            f"{OK if toy_ok else BAD} |"]
    group = None
    bugs = []
    for c in r.corpus.cases:
        row = rows[c.record.clip_id]
        if c.group != group:
            group = c.group
            out.append(f"| ***{group}*** | | | | |")
        good = not row["problems"]
        does = c.does if (c.bug and not good) or not c.bug else describe(c.expect)
        status = OK if good else (BAD + " (known bug)" if c.bug else BAD)
        if c.bug and not good:
            bugs.append(c)
        fails = ", ".join(f"`{f}`" for f in row["fails"]) or "none"
        out.append(f"| {_esc(c.what)} | {_esc(does)} | {row['has_audio']} / {row['has_face']} | {fails} | "
                   f"{status}{'' if good else ': ' + _esc(_short('; '.join(row['problems']), 160))} |")
    cos = tb.mixdown_scores(r.cache, r.corpus) if r.pretrained else {}
    if cos:
        ctrl = cos.pop("left_only_ctrl")
        out += ["", "Mix-down and resampling check (ge2e_lstm pretrained): cosine of each file's `audio/clip` "
                "with the mono 16 kHz reference of the same voice; the files hold L = voice + tone, "
                "R = voice - tone, so only a true mean of the channels gives the voice back. "
                + ", ".join(f"{k}: {v:.4f}" for k, v in cos.items())
                + f"; control (left channel alone): {ctrl:.4f}."]
    out += ["", f"Outside the expectations: {len(r.outcome.problems)} problem(s)"
            + (": " + "; ".join(_esc(_short(p)) for p in r.outcome.problems[:5]) if r.outcome.problems else "")
            + f". Scenario time {secs:.0f} s.", ""]
    n_valid = len(r.corpus.toy) + sum(1 for c in r.corpus.cases if c.expect.audio or c.expect.face)
    lost = sum(1 for x in r.outcome.rows if (x["case"] == "toy" and not (x["has_audio"] and x["has_face"])))
    return out, {"bad_ok": not r.outcome.problems, "n_bad": len(r.corpus.cases), "bugs": bugs,
                 "valid_lost": lost, "n_valid": n_valid, "rss": r.proc.maxrss_mib}


def section_kills(work: Path, base: Path) -> tuple[list[str], dict]:
    out = ["## Kills", ""]
    r = ek.run_kill_series(work / "kills", base)
    ok = not r.problems and not r.diffs and r.final.rc == 0 and r.verify.rc == 0 and len(r.log) == kt.N_KILLS
    survived = len(r.log) if ok else 0
    out += [f"### kill -9 of `avfuse extract`, {len(r.log)} times, then one rerun", "",
            "Fault corpus: the 12 toy clips + 2 failing clips, shards of 1 clip, one decode worker "
            "process. Each run is `python -m pipeline extract ...` (same command every time) killed with "
            "SIGKILL at a seeded point; after every kill the store is checked (done shards pass `verify` "
            "and read back; nothing else wrong), then the next run resumes.", "",
            "| kill | point | seconds after start | shards done before / after | half-written shards left "
            "(chunks, no marker) | stale lock left | decode workers: at the kill / still alive |",
            "| --- | --- | --- | --- | --- | --- | --- |"]
    first_wait = next((k for k in r.log if k.get("workers_at_kill", 0)), None)
    for k in r.log:
        if k["mode"] == "startup":
            point = f"start-up (at {k['delay']:.2f} s or when the lock is taken)"
        elif k["mode"] == "compute":
            point = f"{k['more']} more shard(s) done + {1000 * k['delay']:.0f} ms (in the next shard)"
        else:
            point = f"{k['more']} more shard(s) done, then as the next shard's chunks are written (no marker yet)"
        alive = f"{k['workers_at_kill']} / {k['children_left']}" + (
            f" ({k['children_waited_s']:.1f} s after)" if k is first_wait else " (at once)")
        out.append(f"| {k['kill']} | {point} | {k['seconds_after_start']} | {k['done_before']} / {k['done_after']} | "
                   f"{k['half_written'] or '-'} | {'yes' if k['locked_by_dead_pid'] else 'no'} | {alive} |")
    out += ["", f"Final rerun: exit {r.final.rc}; differences from the uninterrupted reference (ids, order, "
            f"flags, embeddings allclose, failures.jsonl): **{len(r.diffs)}**"
            + (" (" + "; ".join(_esc(_short(d)) for d in r.diffs[:3]) + ")" if r.diffs else "")
            + f"; `avfuse cache verify`: exit {r.verify.rc}; problems seen after the kills: {len(r.problems)}"
            + (" (" + "; ".join(_esc(_short(p)) for p in r.problems[:3]) + ")" if r.problems else "")
            + f". Series time {r.seconds:.0f} s. Decode workers: the first kill that finds some waits up to "
            f"{kt.ORPHAN_GRACE_S:.0f} s for them to exit by themselves; the others are counted at once "
            f"(and killed with the process group).", ""]
    lost = r.lost
    h = ek.run_h5_kill_series(work / "kills_h5", base)
    hok = not h.problems and not h.diffs and h.final.rc == 0 and h.verify.rc == 0 and not h.leftovers
    hit = [k for k in h.log if k["hit"]]
    what = {"startup": "start-up", "compute": "after a shard is staged", "staging": "while a part file is written",
            "finalize": "while the parts are merged into a copy of the .h5 (before the rename)"}
    out += ["### The same with an HDF5 cache (`C.h5`)", "",
            f"{len(h.log)} seeded kill -9 points of `avfuse extract` into `killed.h5`, {len(hit)} hit "
            "(" + "; ".join(f"{sum(k['mode'] == m for k in hit)} {w}" for m, w in what.items()) + "), then one "
            f"rerun: exit {h.final.rc}; differences from the uninterrupted reference: **{len(h.diffs)}**; "
            f"clips lost: {h.lost}; `avfuse cache verify`: exit {h.verify.rc}; temp files or merge copies left: "
            f"{len(h.leftovers)}; problems after the kills: {len(h.problems)}.", ""]
    lost += h.lost
    survived += len(hit) if hok else 0
    h5_leftovers = len(h.leftovers)
    orphan = next((k for k in r.log if k.get("workers_at_kill", 0)), None)
    stats = {"extract_kills": survived, "extract_lost": lost, "h5_leftovers": h5_leftovers,
             "orphans": orphan["children_left"] if orphan else 0,
             "orphan_wait": orphan["children_waited_s"] if orphan else 0.0}

    try:
        import distributed  # noqa: F401
        d = tk.run_dask_worker_kill(work / "dask", base)
        dok = bool(d.killed) and not d.diffs and not d.problems
        out += ["### A Dask worker killed mid-shard", "",
                "`run_distributed` on a LocalCluster of 2 worker processes; as soon as a worker executes a "
                f"shard task, its process gets SIGKILL (killed: {'yes' if d.killed else 'no'}"
                + (f", {d.killed['done_at_kill']} shards done then, task {d.killed['tasks'][0]}" if d.killed else "")
                + f"). The nanny restarts it and the task is rescheduled; fallback (clip-by-clip) shards: "
                f"{d.summary.fallback_shards or 'none'}; differences from the reference: **{len(d.diffs)}**; "
                f"store problems: {len(d.problems)}.", ""]
        stats["dask"] = dok
        stats["extract_lost"] += d.lost
    except ImportError:
        out += ["### A Dask worker killed mid-shard", "", "not run: `distributed` is not installed", ""]
        stats["dask"] = None

    c = tk.run_checkpoint_kills(work / "ckpt")
    out += ["### kill -9 while a head checkpoint is written", "",
            f"A process rewrites one checkpoint with `save_head` in a loop (version i = weights filled with i, "
            f"meta `{{\"i\": i}}`) and is killed {len(c.log)} times at seeded moments. After each kill "
            f"`load_head` gives one whole version: {sum(x['whole'] for x in c.log)}/{len(c.log)} "
            f"(versions loaded: {', '.join(str(x['version_loaded']) for x in c.log)}); problems: {len(c.problems)}. "
            f"Temp files (`.head.pt.*.tmp`, never read) beside the checkpoint after the last kill: "
            f"**{len(c.temps)}** (each save sweeps the temp files of writers that are gone); after one more "
            f"save by a live process: **{len(c.temps_after_save)}**.", ""]
    t = tk.run_train_kill(work / "train", base)
    out += [f"`avfuse train --out H` over an existing head H, killed with SIGKILL while training: H still "
            f"loads and is unchanged: {OK if t.unchanged else BAD}.", ""]
    stats.update(ckpt_kills=len(c.log) if not c.problems else 0, ckpt_ok=not c.problems,
                 train_ok=t.alive_at_kill and t.unchanged, ckpt_temps=len(c.temps),
                 ckpt_temps_left=len(c.temps_after_save))
    return out, stats


def _damage_table(d) -> list[str]:
    """Markdown rows: each damaged shard, what `verify` said of it and the read error."""
    lines = d.verify.stdout.splitlines()
    rows = ["| damage | `avfuse cache verify` (exit " + str(d.verify.rc) + ") | reading those rows |",
            "| --- | --- | --- |"]
    for kind, k in d.shards.items():
        v = "; ".join(x for x in lines if f"shard {k}:" in x or f"shard {k} " in x)
        rows.append(f"| {kind}, shard {k} | {_esc(_short(v, 150))} | `CacheError`: {_esc(_short(d.errors[kind], 120))} |")
    return rows


def section_disk_damage(work: Path, base: Path) -> tuple[list[str], dict]:
    out = ["## Full disk", "",
           "| how | shards done before the error | store after the error | error shown | one clean line? | rerun "
           "with space | equals reference |", "| --- | --- | --- | --- | --- | --- | --- |"]
    stats = {}
    for method, what in (("tmpfs", f"cache on a {tf.TMPFS_SIZE} tmpfs (ENOSPC)"),
                         ("fsize", "RLIMIT_FSIZE = 0 set after 2 shards (EFBIG)")):
        r = tf.run_full_disk(work / f"disk-{method}", base, method)
        if r is None:
            out.append(f"| {what} | not run (cannot mount here) | | | | | |")
            continue
        clean = hx.one_line_error(r.full) is None
        out.append(f"| {what} | {r.done_before_error} | {'valid (only shards not done)' if not r.problems else BAD} "
                   f"| `{_esc(_short(r.error_line, 80))}` (exit {r.full.rc}) | {OK if clean else BAD + ' (traceback)'} "
                   f"| exit {r.rerun.rc} | {OK if not r.diffs else BAD} |")
        stats[method] = {"clean": clean, "resumed": r.rerun.rc == 0 and not r.diffs and not r.problems}
    d = td.run_damage(work / "damage", base)
    out += ["", "## Damaged store", "",
            "Three shards of a copy of the reference cache damaged at once.", "",
            *_damage_table(d)]
    rerun_ok = not d.diffs_rerun and d.after_rerun.rc == 0
    m = [x for x in d.rerun.stderr.splitlines() if "computed now" in x]
    out += ["", f"* `avfuse extract` rerun on the damaged store: {_esc(m[0] if m else 'exit ' + str(d.rerun.rc))}; "
            f"store healthy afterwards: {OK if rerun_ok else BAD + ' (the damaged shards are kept: known bug)'}.",
            f"* `avfuse cache verify --invalidate-damaged` then `avfuse extract`: "
            f"{_esc(_short(d.invalidate.stderr.strip().splitlines()[-1], 120))}; equals the reference: "
            f"{OK if not d.diffs_repair else BAD}."]
    e = td.run_edited_attributes(work / "edited", base)
    out += [f"* Edited attributes (`provenance.config.segments` changed in zarr.json): verify exit {e.verify.rc} "
            f"(\"{_esc(_short(e.verify.stdout.splitlines()[0], 100))}\"); rows still readable: "
            f"{OK if e.readable else BAD}; `avfuse extract` refuses the store: exit {e.rerun.rc}, "
            f"\"{_esc(_short(e.rerun.stderr.strip().splitlines()[-1], 140))}\".", ""]
    h = td.run_damage(work / "damage_h5", base, ".h5")
    out += ["### The same in an HDF5 cache (`C.h5`)", "",
            "Bytes flipped in place inside the file (the data is stored uncompressed: only avfuse's per-shard "
            "checksums can notice) and one marker overwritten, in a copy of an HDF5 reference of the same corpus.", "",
            *_damage_table(h)]
    h_ok = not h.diffs_rerun and h.after_rerun.rc == 0
    m = [x for x in h.rerun.stderr.splitlines() if "computed now" in x]
    out += ["", f"* `avfuse extract` rerun: {_esc(m[0] if m else 'exit ' + str(h.rerun.rc))}; equals the reference "
            f"and verifies afterwards: {OK if h_ok else BAD}.", ""]
    stats.update(damage_rerun=rerun_ok and h_ok, damage_repair=not d.diffs_repair,
                 edited=e.rerun.rc == 2 and e.verify.rc == 1)
    return out, stats


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=str(REPO / "docs" / "RELIABILITY.md"))
    ap.add_argument("--work", default=None,
                    help="scratch folder, kept (its base/ corpus is reused; the rest is redone); "
                         "default: a temp dir, removed")
    ap.add_argument("--long-seconds", type=float, default=bm.LONG_SECONDS)
    args = ap.parse_args(argv)
    import torch
    torch.set_num_threads(1)
    t0 = time.time()
    tmp = None
    if args.work:  # reuse the toy corpus and the fault reference in WORK/base; redo the rest
        work = Path(args.work)
        work.mkdir(parents=True, exist_ok=True)
        import shutil
        for p in work.iterdir():
            if p.name != "base":
                shutil.rmtree(p) if p.is_dir() else p.unlink()
    else:
        tmp = tempfile.TemporaryDirectory(prefix="avfuse-reliability-")
        work = Path(tmp.name)
    base = work / "base"
    toy = bm.toy_corpus(base)
    hx.fault_corpus(base)
    parts, stats = [], {}
    for fn, kw in ((section_bad_inputs, dict(work=work, toy=toy, long_seconds=args.long_seconds)),
                   (section_kills, dict(work=work, base=base)),
                   (section_disk_damage, dict(work=work, base=base)),
                   (section_untrusted, dict(work=work, base=base))):
        print(f"running {fn.__name__} ...", file=sys.stderr, flush=True)
        lines, st = fn(**kw)
        parts += lines
        stats.update(st)
    total = time.time() - t0
    bug_state = {
        BUGS[0][0]: bool(stats.get("bugs")),
        BUGS[1][0]: stats.get("orphans", 0) > 0,
        BUGS[2][0]: not all(v["clean"] for k, v in stats.items() if k in ("tmpfs", "fsize")),
        BUGS[3][0]: not stats.get("damage_rerun"),
        BUGS[4][0]: stats.get("headers_ok", 0) < stats.get("headers_n", 0),
        BUGS[5][0]: not stats.get("ckpt_honest"),
        BUGS[6][0]: (stats.get("long_id_line") or 0) >= 2000,
        BUGS[7][0]: stats.get("ckpt_temps_left", 0) > 0,
        BUGS[8][0]: stats.get("h5_leftovers", 0) > 0,
    }
    kills = stats.get("extract_kills", 0) + (1 if stats.get("dask") else 0) + stats.get("ckpt_kills", 0) \
        + (1 if stats.get("train_ok") else 0)
    lost = stats.get("valid_lost", 0) + (stats.get("extract_lost") or 0)
    head = [
        "# Reliability: bad inputs and faults", "",
        "<!-- generated by benchmarks/reliability_report.py; do not edit by hand -->",
        "Generated by `python benchmarks/reliability_report.py` (it runs the scenarios of "
        "`tests/reliability/`, the same functions the tests call, and rewrites this file; "
        f"{total / 60:.0f} min here). The tests assert the same outcomes: "
        "`.venv/bin/python -m pytest tests/reliability -q`.", "",
        f"Run {dt.datetime.now(dt.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')} on {os.cpu_count()} CPU cores "
        f"({platform.machine()}, Python {platform.python_version()}, torch {torch.__version__}), CPU only, "
        "shared with other jobs (timings are indicative).", "",
        "## Figures", "",
        f"* **Kills survived: {kills}** ({stats.get('extract_kills', 0)} kill -9 of `avfuse extract` (Zarr and HDF5) at seeded "
        f"points, {'1 Dask worker killed mid-shard, ' if stats.get('dask') else ''}"
        f"{stats.get('ckpt_kills', 0)} kill -9 while writing a head checkpoint, "
        f"{1 if stats.get('train_ok') else 0} kill -9 of `avfuse train`); every finished cache equals the "
        "uninterrupted run (same ids, none twice, none missing, same flags, allclose embeddings, same "
        "failures file) and passes `avfuse cache verify`.",
        f"* **Clips lost: {lost}** (valid clips missing or flagged in any final cache).",
        f"* Bad or odd media tried: {stats.get('n_bad', 0)} kinds mixed into a valid corpus; as expected: "
        f"{'all' if stats.get('bad_ok') else 'not all'} (known bugs listed below); peak memory with two "
        f"{args.long_seconds / 60:g}-minute clips: {stats.get('rss', 0):.0f} MiB.",
        "* Full disk: done shards stay valid and the rerun completes: "
        + ", ".join(f"{k} {OK if v['resumed'] else BAD}" for k, v in stats.items() if k in ("tmpfs", "fsize"))
        + "; one clean error line: " + ", ".join(f"{k} {OK if v['clean'] else BAD}" for k, v in stats.items()
                                                   if k in ("tmpfs", "fsize")) + ".",
        f"* Malicious pickles refused everywhere, no code run: {OK if stats.get('ckpt_refused') else BAD} "
        f"(one honest line: {OK if stats.get('ckpt_honest') else BAD}). "
        f"Odd store headers handled: {stats.get('headers_ok')}/{stats.get('headers_n')}.", "",
        "## Known bugs found by this suite", "",
        "State is measured by this run: *open* = the scenario still shows the defect (its test fails); "
        "*fixed* = found by this suite, fixed since (its test now guards it).", "",
        "| bug | where | what happened | fix proposed | test | state now |", "| --- | --- | --- | --- | --- | --- |"]
    for name, where, what, fix, test in BUGS:
        head.append(f"| {name} | {where} | {_esc(what)} | {_esc(fix)} | `{test}` | "
                    f"{'open' if bug_state[name] else 'fixed'} |")
    head.append("")
    text = "\n".join(head + parts) + "\n"
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text, encoding="utf-8")
    print(f"wrote {args.out} in {total:.0f} s", file=sys.stderr)
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())

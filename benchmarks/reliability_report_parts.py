"""Parts of ``reliability_report.py`` (kept apart for size): the Markdown helpers, the
"files a user is handed" section, and the table of bugs this suite found (``BUGS``).
Not a benchmark: running it does nothing."""

from __future__ import annotations

from pathlib import Path

from tests.reliability import harness as hx
from tests.reliability import test_untrusted_files as tu

OK, BAD = "yes", "**NO**"


def _esc(s: str) -> str:
    return str(s).replace("|", "\\|").replace("\n", " ")


def _short(s: str, n: int = 110) -> str:
    s = " ".join(str(s).split())
    return s if len(s) <= n else s[: n - 3] + "..."


def section_untrusted(work: Path, base: Path) -> tuple[list[str], dict]:
    out = ["## Files a user is handed", "", "### Malicious checkpoints", ""]
    live = tu.payload_is_live(work)
    rows = tu.run_malicious_checkpoints(work, base)
    out += [f"Checkpoints whose pickle runs `os.system(\"touch MARKER\")` when unpickled (control: loaded with "
            f"`weights_only=False` it does create its marker: {'yes' if live else 'NO'}).", "",
            "| entry point | result | marker created | one-line error | names the refused global, no "
            "\"weights_only=False\" advice |", "| --- | --- | --- | --- | --- |"]
    honest_all = True
    for r in rows:
        msg = r["error"][0] if r["error"] else ""
        honest = "posix.system" in msg and "will likely succeed" not in msg
        honest_all &= honest and r["clean_error"] is None
        out.append(f"| {r['entry']} | {_esc(_short(msg, 130))} | "
                   f"{BAD if r['marker_written'] else 'no'} | {OK if r['clean_error'] is None else BAD} | "
                   f"{OK if honest else BAD} |")
    ck_ok = all(not r["marker_written"] and r["error"] and r["rc"] in (None, 2) for r in rows)
    o = tu.run_outside_paths(work / "outside", base)
    out += ["", "### Manifest paths outside the corpus", "",
            "avfuse does not confine media paths to the corpus folder: relative paths are resolved against "
            "the manifest's folder (so `../` may leave it) and absolute paths are used as they are. A path is "
            "only ever *read by a media decoder*: a file that is not media is a decode failure, a path that is "
            "not a regular file (device, FIFO, folder) is reported as not found without being opened, nothing "
            "is written or executed.", "",
            "| media path | what avfuse does |", "| --- | --- |"]
    for r in o.rows:
        if r["clip_id"].startswith("idout/"):
            out.append(f"| `{r['clip_id'].split('/')[1]}` | has_audio {r['has_audio']}, has_face {r['has_face']}; "
                       f"{_esc(_short(' / '.join(x.split(': ', 1)[-1] for x in r['errors']), 140))} |")
    out += ["", f"All as expected (valid clips embedded, the rest logged, verify clean): "
            f"{OK if not o.problems else BAD + ' ' + _esc(_short('; '.join(o.problems), 200))}.", ""]
    li = tu.run_long_ids(work / "long", o.cache) if o.proc.rc == 0 else None
    if li is not None:
        line = next((x for x in li.missing.stderr.splitlines() if x.startswith("avfuse: error:")), "")
        out += ["### 10,000-character ids", "",
                f"A cache holding a clip under a 10,000-character id, and trial lists naming it: parsed "
                f"({li.parsed.n_trials} trials), scored (exit {li.scored.rc}). A list naming an unknown "
                f"10k-character id: one-line `ScoringError`, exit {li.missing.rc}, but the line is "
                f"{len(line):,} characters long (the whole id is quoted); with `--skip-missing`: exit "
                f"{li.skipped.rc}.", ""]
    res = tu.probe_odd_headers(hx.fault_corpus(base)[1], work)
    good = sum(bool(v["outcome"] == "CacheError" or (v["outcome"] == "opened" and v["verify"])) for v in res.values())
    out += ["### Odd JSON in the store's attributes (`zarr.json`)", "",
            f"Each variant written into a copy of a cache, then `open_cache`, `to_numpy`, `info` and `verify` "
            f"(in a subprocess limited to 3 GiB of address space). Handled (CacheError, or opened and the edit "
            f"reported by verify): **{good}/{len(res)}**.", "",
            "| zarr.json | outcome |", "| --- | --- |"]
    for k, v in res.items():
        if v["outcome"] == "CacheError":
            o_ = f"CacheError: {_esc(_short(v['error'].split(': ', 1)[-1], 100))}"
        elif v["outcome"] == "opened":
            o_ = ("opened; verify: " + _esc(_short(v["verify"][0], 100))) if v["verify"] else BAD + " opened, verify silent"
        else:
            o_ = f"{BAD} {v['outcome']}: {_esc(_short(v['error'], 70))} ({v.get('where', '')})"
        out.append(f"| {_esc(k)} | {o_} |")
    out.append("")
    return out, {"ckpt_refused": ck_ok, "ckpt_honest": honest_all, "outside_ok": not o.problems, "headers_ok": good, "headers_n": len(res),
                 "long_id_line": len(line) if li else None}


BUGS = [
    ("Truncated faststart mp4: audio half-decoded silently", "extractors/decode.py `_load_pyav_audio`",
     "An mp4 whose index comes first (faststart), cut at 50 %, decodes its audio up to the cut without a "
     "decoder error; the part is embedded as the whole clip (has_audio True, no record).",
     "After decoding, compare the decoded length with the stream's declared duration (`stream.duration * "
     "stream.time_base`, else `container.duration`); clearly shorter (e.g. by > 2 frames and > 5 %) -> "
     "`DecodeError(\"truncated: decoded X s of the Y s the file declares\")`, as for a truncated WAV.",
     "test_bad_inputs.py::test_truncated_faststart_mp4_audio_is_refused"),
    ("Decode workers orphaned by kill -9", "pipeline/extract_shard.py `iter_decoded` / `_worker_init`",
     "After SIGKILL of `avfuse extract`, its DataLoader decode workers do not exit (seen alive "
     "> 60 s: blocked at exit flushing decoded clips into a queue nobody reads), each a full Python + torch "
     "process.",
     "In `_worker_init`: `ctypes.CDLL(\"libc.so.6\", use_errno=True).prctl(1, signal.SIGKILL)` "
     "(PR_SET_PDEATHSIG, Linux) and `os._exit(0)` if `os.getppid()` is already not the parent.",
     "test_extract_kills.py::test_decode_workers_exit_when_extract_is_killed"),
    ("Full disk is a traceback", "pipeline/cache_writer.py `CacheWriter.write_shard` (and `create_cache`, "
     "`finalize`)",
     "ENOSPC/EFBIG from the Zarr store escapes as `OSError` with a 40-line traceback, exit 1.",
     "Wrap the backend calls: `except OSError as e: raise CacheError(f\"cannot write shard {k}: {e.strerror}\", "
     "path=self.path, hint=\"free disk space (or raise the file-size limit) and rerun: the N done shards are "
     "kept\") from e` -> one line, exit 2.",
     "test_full_disk.py::test_full_disk_is_one_clear_error"),
    ("Extract does not recompute damaged shards", "pipeline/extract.py `run_extract` (and "
     "pipeline/distributed.py `run_distributed`)",
     "Resume trusts every marker: after a deleted/corrupted chunk or a clobbered marker, a rerun computes "
     "nothing and the store stays damaged; only `avfuse cache verify --invalidate-damaged` repairs it.",
     "After `pending = writer.pending_shards()`: `bad = writer.damaged_shards()` (storage problems: missing "
     "chunk files, unreadable marker, checksum mismatch; reads each done shard once), warn, "
     "`writer.invalidate_shard(k)` for each, and compute `sorted(pending + bad)`. A `--no-check` flag can skip "
     "the read for huge caches.",
     "test_damage.py::test_extract_rerun_recomputes_damaged_shards"),
    ("Odd JSON in zarr.json escapes as TypeError/ValueError/..., or exhausts memory",
     "pipeline/cache.py `EmbeddingCache.__init__`, pipeline/cache_zarr.py `read_header`",
     "A header that is not an object, a non-int format_version, and layout/n_rows of the wrong type or "
     "range raise TypeError, ValueError, ZeroDivisionError, OverflowError; n_rows = 10^12 makes `verify` "
     "build a list of 10^12 shards (MemoryError, or the OOM killer without a limit).",
     "In `read_header`: refuse a non-dict `avfuse` attribute. In `__init__`, inside the `try`: require an int "
     "format_version, call `self.layout.validate()`, require an int `n_rows >= 1` equal to the length of the "
     "stored `ids` array (its metadata shape), and catch OverflowError/ZeroDivisionError too.",
     "test_untrusted_files.py::test_odd_json_in_store_attributes_is_a_cache_error"),
    ("Refusing a malicious checkpoint relays torch's advice", "fusion/registry.py `load_head`; "
     "extractors/registry.py `read_checkpoint`",
     "`load_head` (and so `avfuse score --head`) embeds torch's multi-line UnpicklingError text, which says "
     "re-running with `weights_only=False` \"will likely succeed\"; `read_checkpoint`'s regex "
     "(`Unsupported global: GLOBAL x`) misses torch 2.11's wording (`unsupported GLOBAL posix.system whose "
     "module posix is blocked`), so it calls the file damaged and cuts the message before the global's name.",
     "One shared helper for both: match `(?i)unsupported global:? (?:GLOBAL )?(\\S+)` and raise one line "
     "\"refused to unpickle posix.system: the file holds code/objects, not tensors\" with avfuse's own hint; "
     "never relay torch's text.",
     "test_untrusted_files.py::test_malicious_checkpoint_refusal_is_one_honest_line"),
    ("A 10,000-character id makes a 10 kB error line", "pipeline/scoring.py (the missing-utterances "
     "`ScoringError`, `_preview`)",
     "The one-line error quotes unknown ids whole.", "Shorten each previewed id to ~80 characters + \"...\".",
     "test_untrusted_files.py::test_error_about_a_10k_character_id_stays_readable"),
    ("Temp files of killed checkpoint writers pile up", "pipeline/config.py `atomic_write_bytes`",
     "A `save_head` (or any atomic write) killed between its temp file and the rename leaves "
     "`.head.pt.*.tmp` beside the file for ever (7 after 10 kills).",
     "Name temps `.NAME.HOST-PID.*.tmp`; after each successful rename remove the ones of this host whose "
     "PID no longer exists (never another host's, never a live PID's).",
     "test_kills.py::test_kill9_while_saving_a_head_checkpoint"),
    ("HDF5 part temp files of killed stagers pile up", "pipeline/cache_h5.py `write_shard` / `_merge`",
     "`avfuse extract` into a `.h5` killed while staging a shard leaves `C.h5.parts/.NNNNNN.PID-*.tmp` "
     "(an npz of the shard's arrays) after the rerun has merged everything.",
     "Name part temps `.NNNNNN.HOST-PID-*.tmp`; `finalize` (under its flock) removes those of this host "
     "whose PID no longer exists.",
     "test_extract_kills.py::test_kill9_extract_then_rerun_equals_uninterrupted"),
]

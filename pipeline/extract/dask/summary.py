"""What a Dask extraction run reports: its summary (per worker) and its progress bar."""

from __future__ import annotations

import sys
from collections import Counter
from dataclasses import dataclass, field

from pipeline.core.progress import progress
from pipeline.extract.run import ExtractSummary


@dataclass
class DistributedSummary(ExtractSummary):
    """``ExtractSummary`` plus what the cluster did. ``per_worker``: worker name ->
    {"shards", "clips", "seconds"} of the shards it computed in this run."""
    computed_shards: list[int] = field(default_factory=list)
    already_done_in_task: list[int] = field(default_factory=list)
    fallback_shards: list[int] = field(default_factory=list)
    per_worker: dict = field(default_factory=dict)
    n_workers: int = 0
    scheduler: str = ""
    setup_seconds: float = 0.0   # driver start -> every worker has its backbones loaded

    def decode_bound_hint(self) -> str | None:
        return None       # the tasks' waits overlap each other: their sum says nothing about the run

    def text(self) -> str:
        lines = [super().text(), f"Dask: {self.n_workers} worker(s) at {self.scheduler}; "
                                 f"{self.setup_seconds:.1f} s of setup (backbones loaded on every worker)"]
        total = sum(w["clips"] for w in self.per_worker.values()) or 1
        for name, w in sorted(self.per_worker.items()):
            lines.append(f"  {name}: {w['shards']} shards, {w['clips']} clips ({100 * w['clips'] / total:.0f}%)")
        if self.fallback_shards:
            lines.append(f"shards {self.fallback_shards} failed repeatedly on the workers and were recomputed "
                         f"clip by clip (clips that failed again are in the failures file)")
        return "\n".join(lines)


class DaskProgress:
    """tqdm bar over clips with shards done and each worker's share in the postfix."""

    def __init__(self, total: int, initial: int, n_shards: int, done_shards: int, enabled: bool):
        self.bar = progress(total=total, initial=initial, unit="clip", enabled=enabled, tty_only=False,
                            leave=True, desc="extract (dask)", smoothing=0.1)
        self.n_shards, self.done = n_shards, done_shards
        self.by_worker: Counter = Counter()

    def shard(self, clips: int, worker: str | None) -> None:
        self.done += 1
        if worker:
            self.by_worker[worker] += clips
        total = sum(self.by_worker.values()) or 1
        share = " ".join(f"{w}:{100 * c / total:.0f}%" for w, c in sorted(self.by_worker.items()))
        self.bar.set_postfix_str(f"shards {self.done}/{self.n_shards} {share}", refresh=False)
        self.bar.update(clips)

    def write(self, msg: str) -> None:
        self.bar.write(msg, file=sys.stderr)

    def close(self) -> None:
        self.bar.close()

"""``avfuse extract``'s default decode workers: on CUDA in one process, every usable core but
one (decode bounds a GPU box); on the CPU and per task on a Dask cluster, at most 4. "Usable"
is the process's CPU affinity, checked in a child process pinned to fewer cores."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from click.testing import CliRunner

from pipeline.cli.main import cli

CHILD = ("import os, sys; os.sched_setaffinity(0, set(sorted(os.sched_getaffinity(0))[:int(sys.argv[1])])); "
         "from pipeline.extract.config import default_workers as d, usable_cores as u; "
         "print(u(), d('cuda'), d('cuda:1'), d('cpu'), d('cuda', distributed=True))")


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="CPU affinity is Linux-only")
@pytest.mark.parametrize("cores", [1, 2])
def test_defaults_follow_the_usable_cores(cores):
    if len(os.sched_getaffinity(0)) < cores:
        pytest.skip(f"needs {cores} usable cores")
    out = subprocess.run([sys.executable, "-c", CHILD, str(cores)], capture_output=True, text=True, check=True,
                         cwd=os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(__file__)))))
    u, cuda, cuda1, cpu, dist = map(int, out.stdout.split())
    assert u == cores
    assert cuda == cuda1 == max(1, cores - 1)
    assert cpu == dist == min(4, cores)


def test_help_states_both_defaults():
    res = CliRunner().invoke(cli, ["extract", "--help"], terminal_width=200)
    assert res.exit_code == 0
    text = " ".join(res.output.split())
    assert "every usable core but one" in text and "min(4, cores)" in text


def test_default_batch_size_by_device_and_gpu_memory():
    import torch

    from pipeline.extract.config import BIG_GPU_GIB, default_batch_size
    assert default_batch_size("cpu") == 8
    if not torch.cuda.is_available():          # no GPU to ask: the size that fits small ones
        assert default_batch_size("cuda") == default_batch_size("cuda:1") == 64
    else:
        big = torch.cuda.get_device_properties(0).total_memory >= BIG_GPU_GIB * 2**30
        assert default_batch_size("cuda:0") == (128 if big else 64)
    res = CliRunner().invoke(cli, ["extract", "--help"], terminal_width=200)
    assert "on CUDA 128 with 40 GiB of GPU memory or more, else 64" in " ".join(res.output.split())


def test_a_local_cuda_cluster_shares_the_cores_among_its_tasks():
    """--cluster local on CUDA: the usable cores but one per worker, split over its concurrent shard
    tasks (min(4, cores) per task left half of a 16-core GPU box idle); elsewhere the usual defaults."""
    from pipeline.extract.config import usable_cores
    from pipeline.extract.dask.cluster import ClusterOptions
    cores = usable_cores()
    one = ClusterOptions(cluster="local", devices=("0",))
    assert one.default_decoders("cuda") == max(1, (cores - 1) // 2)
    four = ClusterOptions(cluster="local", devices=("0", "1", "2", "3"), threads_per_worker=1)
    assert four.default_decoders("cuda") == max(1, (cores - 4) // 4)
    assert ClusterOptions(cluster="local").default_decoders("cpu") is None
    assert ClusterOptions(scheduler="tcp://127.0.0.1:8786").default_decoders("cuda") is None

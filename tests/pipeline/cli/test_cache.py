"""`avfuse cache info | verify | export` on real Zarr and HDF5 caches."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from pipeline.cache import CacheLayout, create_cache, open_cache
from pipeline.cache.testing import LAYOUT, PROV, corrupt_chunk, make_rows, shard_data
from pipeline.cli import cli, main


@pytest.fixture(params=[".zarr", ".h5"], ids=["zarr", "hdf5"])
def cache(request, tmp_path):
    """A complete 10-row cache (3 shards) with 4 failures."""
    w = create_cache(tmp_path / f"emb{request.param}", layout=CacheLayout(**LAYOUT),
                     provenance=PROV, **make_rows())
    with w.lock():
        for k in range(w.n_shards):
            arrays, failures = shard_data(w.layout, w.ids.tolist(), k)
            w.write_shard(k, arrays, failures)
        w.finalize()
    w.close()
    return w.path


def run(*args):
    return CliRunner().invoke(cli, ["cache", *map(str, args)])


def test_help_lists_the_subcommands():
    r = run("--help")
    assert r.exit_code == 0
    for word in ("info", "verify", "export"):
        assert word in r.output
    assert "--allow-incomplete" in run("export", "--help").output


def test_info_text_and_json(cache):
    r = run("info", cache)
    assert r.exit_code == 0, r.output
    assert "10 in 3 shards of 4: 3 done, complete" in r.output
    assert "audio/segments       10 x 3 x 6" in r.output and "float16" in r.output
    assert "audio_backbone: name=ge2e_lstm weights=random" in r.output
    assert "failures     4 (backbone 2, decode 2)" in r.output
    j = json.loads(run("info", cache, "--json").output)
    assert (j["rows"], j["shards_done"], j["shards_total"], j["complete"]) == (10, 3, 3, True)
    assert j["arrays"]["face/frames"]["shape"] == [10, 2, 5]
    assert j["arrays"]["has_face"]["dtype"] == "bool"
    assert j["bytes_on_disk"] > 0 and all(a["bytes_on_disk"] > 0 for a in j["arrays"].values())
    assert j["failures"]["count"] == 4 and j["failures"]["by_stage"] == {"decode": 2, "backbone": 2}
    assert j["provenance"] == PROV and j["fingerprint"] == open_cache(cache).fingerprint
    assert j["splits"] == {"test": 3, "dev": 7}


def test_verify_ok_then_damage_then_invalidate(cache):
    r = run("verify", cache, "-q")
    assert r.exit_code == 0 and r.output.startswith("OK "), r.output
    corrupt_chunk(cache, "face/frames", 2, 4)
    r = run("verify", cache, "-q")
    assert r.exit_code == 1
    assert "shard 2" in r.output and "face/frames" in r.output
    r = run("verify", cache, "-q", "--invalidate-damaged")
    assert r.exit_code == 1 and "invalidated 1 damaged shard(s): 2" in r.output
    c = open_cache(cache)
    assert c.done_shards() == {0, 1}
    r = run("verify", cache, "-q")
    assert r.exit_code == 1 and "1 of 3 shards not done: 2" in r.output


def test_export_npz_round_trip(cache, tmp_path):
    out = tmp_path / "out" / "emb.npz"
    r = run("export", cache, "--out", out, "-q")
    assert r.exit_code == 0, r.output
    c = open_cache(cache)
    with np.load(out, allow_pickle=False) as z:
        assert z["ids"].tolist() == c.ids.tolist() and z["splits"].tolist() == c.splits.tolist()
        assert "done" not in z.files
        for name in c.names:
            assert z[name].dtype == (bool if c.specs[name].dtype == "bool" else np.float32)
            np.testing.assert_array_equal(z[name], c.to_numpy(name))


def test_export_refuses_incomplete_unless_allowed(tmp_path, capsys):
    w = create_cache(tmp_path / "part.zarr", layout=CacheLayout(**LAYOUT), provenance=PROV, **make_rows())
    arrays, failures = shard_data(w.layout, w.ids.tolist(), 1)
    w.write_shard(1, arrays, failures)
    out = tmp_path / "emb.npz"
    with pytest.raises(SystemExit) as e:
        main(["cache", "export", str(w.path), "--out", str(out)])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "avfuse: error:" in err and "1 of 3 shards done" in err and "--allow-incomplete" in err
    assert not out.exists()
    r = run("export", w.path, "--out", out, "--allow-incomplete", "-q")
    assert r.exit_code == 0, r.output
    with np.load(out) as z:
        assert z["done"].tolist() == [False] * 4 + [True] * 4 + [False] * 2
        assert (z["audio/clip"][~z["done"]] == 0).all()
        np.testing.assert_array_equal(z["audio/clip"][4:8], arrays["audio/clip"].astype(np.float16))


def test_verify_exit_status_through_main(cache, capsys):
    with pytest.raises(SystemExit) as e:
        main(["cache", "verify", str(cache), "-q"])
    assert e.value.code == 0 and "OK" in capsys.readouterr().out
    corrupt_chunk(cache, "audio/clip", 0, 4)
    with pytest.raises(SystemExit) as e:
        main(["cache", "verify", str(cache), "-q"])
    assert e.value.code == 1


def test_missing_cache_is_a_clear_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["cache", "info", str(tmp_path / "nope.zarr")])
    assert e.value.code == 2
    assert "no embedding cache here" in capsys.readouterr().err

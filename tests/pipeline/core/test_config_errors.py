"""Config round-trips, fingerprints, atomic writes and the one-line CLI errors."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import pytest

from pipeline.core import AvfuseError, ConfigError, ManifestError, atomic_write_json, fingerprint, from_dict, to_dict


@dataclasses.dataclass
class Inner:
    dim: int = 256
    name: str = "mean"


@dataclasses.dataclass
class Outer:
    lr: float = 1e-3
    inner: Inner = dataclasses.field(default_factory=Inner)
    tags: list = dataclasses.field(default_factory=lambda: ["a", "b"])


def test_config_round_trips_through_json():
    cfg = Outer(lr=0.5, inner=Inner(dim=128, name="dca"))
    back = from_dict(Outer, json.loads(json.dumps(to_dict(cfg))))
    assert back == cfg
    assert fingerprint(back) == fingerprint(cfg)
    assert fingerprint(Outer(lr=0.25)) != fingerprint(cfg)


def test_unknown_config_field_is_a_config_error():
    with pytest.raises(ConfigError, match="unknown Outer field"):
        from_dict(Outer, {"lr": 1, "nope": 2})


def test_atomic_write_leaves_no_temp_files(tmp_path):
    p = tmp_path / "x" / "cfg.json"
    atomic_write_json(p, Outer())
    atomic_write_json(p, Outer(lr=2.0))
    assert json.loads(p.read_text())["lr"] == 2.0
    assert [f.name for f in p.parent.iterdir()] == ["cfg.json"]


def test_error_string_names_file_line_and_fix():
    e = ManifestError("not valid JSON", path="m.jsonl", line=7, hint="fix the line")
    assert str(e) == "m.jsonl:7: not valid JSON -- fix the line"
    assert isinstance(e, AvfuseError)


def test_cli_prints_one_line_error_and_exits_2(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"clip_id": "a/b/c", "speaker": "a", "video": "b"}\nnot json\n')
    code = ("import sys; from data_manifests.manifest import read_manifest;"
            "from pipeline.cli import cli, main;"
            "import click\n"
            "@cli.command('readm')\n"
            "@click.argument('p')\n"
            "def readm(p):\n    read_manifest(p)\n"
            "main(sys.argv[1:])")
    r = subprocess.run([sys.executable, "-c", code, "readm", str(bad)], capture_output=True, text=True)
    assert r.returncode == 2
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "bad.jsonl:2: not valid JSON" in lines[0], r.stderr
    r = subprocess.run([sys.executable, "-c", code, "--debug", "readm", str(bad)], capture_output=True, text=True)
    assert r.returncode != 0 and "Traceback" in r.stderr


def test_help_lists_commands_quickly():
    r = subprocess.run([sys.executable, "-m", "pipeline", "--help"], capture_output=True, text=True)
    assert r.returncode == 0
    assert "Usage: avfuse" in r.stdout

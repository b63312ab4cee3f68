"""Every registered fusion head exported to ONNX and run with onnxruntime on CPU: outputs equal
PyTorch's ``embed`` within 1e-4 for other batch sizes and step counts, with missing modalities."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from click.testing import CliRunner

ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")

from fusion.batch import EmbeddingBatch  # noqa: E402
from fusion.checkpoint import save_head
from fusion.onnx_export import CLIP_INPUTS, SEQ_INPUTS, example_inputs, export_onnx  # noqa: E402
from fusion.registry import list_heads  # noqa: E402
from pipeline.cli.main import cli  # noqa: E402
from pipeline.core.errors import HeadError  # noqa: E402

DA, DV = 24, 16
HEADS = [e.name for e in list_heads()]


def trained_like(name: str, seed: int = 0):
    """A head with non-trivial weights and fitted input norms (as after `avfuse train`)."""
    from fusion.registry import get_head
    torch.manual_seed(seed)
    head = get_head(name).build(DA, DV).eval()
    with torch.no_grad():
        for p in head.parameters():
            p.add_(0.05 * torch.randn_like(p))
        fit = example_inputs(head, batch=64, seed=9)
        head.fit_inputs(EmbeddingBatch(**fit))
        if name == "score_avg":
            head.weight.fill_(0.3)
            head.sd_a.fill_(0.7)
    return head


def run_both(head, data: bytes, x: dict) -> tuple[np.ndarray, np.ndarray]:
    sess = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    got = sess.run(["embedding"], {k: v.numpy() for k, v in x.items()})[0]
    with torch.no_grad():
        ref = head.embed(EmbeddingBatch(**x)).numpy()
    return got, ref


@pytest.mark.parametrize("name", HEADS)
def test_onnx_equals_pytorch(name, tmp_path):
    head = trained_like(name)
    data = export_onnx(head, tmp_path / "h.onnx", meta={"cache_fingerprint": "abc"})
    model = onnx.load(str(tmp_path / "h.onnx"))
    assert [i.name for i in model.graph.input] == list(SEQ_INPUTS if head.needs_sequences else CLIP_INPUTS)
    props = {p.key: p.value for p in model.metadata_props}
    assert props["avfuse_head"] == name and props["cache_fingerprint"] == "abc"
    steps = head.config.get("steps")   # the attention heads' step count is fixed (static axes)
    other = dict(steps=5, frames=3) if not steps else {}
    cases = [dict(batch=7, absent=True, seed=1), dict(batch=1, seed=2), dict(batch=33, absent=True, seed=3, **other)]
    for case in cases:
        x = example_inputs(head, **case)
        got, ref = run_both(head, data, x)
        assert got.shape == ref.shape == (case["batch"], head.embedding_dim)
        assert np.abs(got - ref).max() <= 1e-4, (name, case)
        assert np.abs(ref).max() > 1e-3          # a real embedding, not zeros
    # one-sided batches (AVxA's test side): no face anywhere, then no audio anywhere
    for flag in ("has_face", "has_audio"):
        x = example_inputs(head, batch=5, seed=4)
        x[flag][:] = False
        got, ref = run_both(head, data, x)
        assert np.abs(got - ref).max() <= 1e-4, (name, flag)


def test_gru_encoder_exports(tmp_path):
    from fusion.heads.attention import CrossAttentionHead
    torch.manual_seed(0)
    head = CrossAttentionHead(audio_dim=DA, face_dim=DV, encoder="gru").eval()
    head.name = "dca"
    data = export_onnx(head)
    got, ref = run_both(head, data, example_inputs(head, batch=6, absent=True, seed=5))
    assert np.abs(got - ref).max() <= 1e-4


def test_cli_export_head(tmp_path):
    head = trained_like("mlp")
    save_head(tmp_path / "run.pt", head, {"cache_fingerprint": "f00"})
    r = CliRunner().invoke(cli, ["export-head", str(tmp_path / "run.pt"), "--onnx", str(tmp_path / "m.onnx")])
    assert r.exit_code == 0, r.output
    assert "onnxruntime matches PyTorch" in r.output
    got, ref = run_both(head, (tmp_path / "m.onnx").read_bytes(), example_inputs(head, batch=9, absent=True))
    assert np.abs(got - ref).max() <= 1e-4
    assert "export-head" in CliRunner().invoke(cli, ["--help"]).output


def test_untraceable_head_is_a_head_error():
    class Bad(torch.nn.Module):
        name, audio_dim, face_dim, needs_sequences = "bad", 4, 4, False

        def embed(self, batch):
            return torch.from_numpy(batch.audio_clip.numpy() * 2)   # leaves the graph: a traced constant

    with pytest.raises(HeadError, match="head 'bad' cannot be exported to ONNX"):
        export_onnx(Bad())

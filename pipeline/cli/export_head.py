"""``avfuse export-head``: a trained fusion head to ONNX (logic in ``fusion/onnx_export.py``)."""

from __future__ import annotations

from pathlib import Path

import click


@click.command("export-head", context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.argument("run", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--onnx", "onnx_path", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="ONNX model to write (atomically).")
@click.option("--opset", type=click.IntRange(min=13), default=17, show_default=True, help="ONNX opset version.")
@click.option("--check/--no-check", default=None,
              help="Run the model with onnxruntime on a random batch (with missing modalities) and compare "
                   "with PyTorch; fail if they differ by more than 1e-4. [default: when onnxruntime is installed]")
def export_head_cmd(run: Path, onnx_path: Path, opset: int, check: bool) -> None:
    """Export the fusion head in RUN.pt (written by `avfuse train`) to ONNX.

    \b
    avfuse export-head runs/dca.pt --onnx dca.onnx

    The model computes the head's embed with a dynamic batch axis (the attention heads'
    step axes are static: their step count is part of the architecture). Inputs,
    float32 / bool:

    \b
    clip heads      audio_clip (B,Da) face_clip (B,Dv) has_audio (B,) has_face (B,)
    sequence heads  audio_seq (B,S,Da) audio_seq_valid (B,S) face_seq (B,F,Dv)
                    face_seq_valid (B,F) has_audio (B,) has_face (B,)
    output          embedding (B,D)

    Score with cosine (or a raw dot product for score_avg; the model's metadata has
    score_kind). Pass has_face all False for an audio-only side (AVxA's test side).
    """
    from fusion.checkpoint import load_head
    from fusion.onnx_export import check_onnx, export_onnx
    from pipeline.core.errors import HeadError
    from pipeline.core.outputs import check_output

    check_output(onnx_path, [run], flag="--onnx")
    if check is None:
        import importlib.util
        check = importlib.util.find_spec("onnxruntime") is not None
        if not check:
            click.echo("note: onnxruntime is not installed; the model is not checked against PyTorch", err=True)
    head, meta = load_head(run)
    data = export_onnx(head, None, meta=meta, opset=opset)
    if check:
        diff = check_onnx(head, data)
        if not diff <= 1e-4:
            raise HeadError(f"onnxruntime and PyTorch differ by {diff:.3g} (> 1e-4) for head '{head.name}'",
                            path=run, hint="report it; pass --no-check to write the model anyway")
    from pipeline.core.fsio import atomic_write_bytes
    atomic_write_bytes(onnx_path, data)
    extra = f"; onnxruntime matches PyTorch (max |diff| {diff:.2e})" if check else ""
    click.echo(f"wrote {onnx_path} (head {head.name}, {len(data)} bytes){extra}")

"""The ``avfuse`` command line: one click group, commands loaded lazily.

Commands live in the package that owns them; this module only maps a name to
``module:attribute`` and a one-line help, so ``avfuse --help`` is instant
(torch is imported only by the commands that need it).
"""

from __future__ import annotations

import errno
import importlib
import importlib.util
import sys

import click

from pipeline import __version__
from pipeline.core.errors import AvfuseError

# name -> (module, attribute, one-line help), in the order of the workflow
COMMANDS: dict[str, tuple[str, str, str]] = {
    "demo": ("pipeline.cli.demo", "demo_cmd", "Run the whole pipeline end to end on the built-in toy corpus."),
    "synth": ("pipeline.cli.synth", "synth_cmd", "Write a synthetic toy VoxCeleb corpus (real media, real layout)."),
    "manifest": ("pipeline.cli.manifest", "manifest_cmd", "Scan a VoxCeleb1/2 tree into a JSONL clip manifest."),
    "trials": ("pipeline.cli.trials", "trials_group", "Inspect a trial list, or draw a labelled one from a split."),
    "backbones": ("pipeline.cli.backbones", "backbones_cmd", "List the audio and face backbones and their input specs."),
    "preflight": ("pipeline.cli.preflight", "preflight_cmd", "Decode a manifest as extract would: failures, CPU per clip, projected time."),
    "extract": ("pipeline.cli.extract", "extract_cmd", "Stage 1: run frozen backbones over a manifest into an embedding cache."),
    "cache": ("pipeline.cli.cache", "cache_group", "Inspect, verify, import (WeSpeaker, SpeechBrain, Kaldi) or export an embedding cache."),
    "heads": ("pipeline.cli.train", "heads_cmd", "List the fusion heads with their size and compute cost."),
    "export-head": ("pipeline.cli.export_head", "export_head_cmd", "Export a trained fusion head to ONNX (dynamic batch)."),
    "train": ("pipeline.cli.train", "train_cmd", "Stage 2: train a fusion head on the cached embeddings."),
    "score": ("pipeline.cli.score", "score_cmd", "Score a trial list from the cache in any modality mode."),
    "evaluate": ("pipeline.cli.score", "evaluate_cmd", "EER, minDCF, actDCF, Cllr of scores files; DET plot; systems x lists."),
    "calibrate": ("pipeline.cli.calibrate", "calibrate_group", "Calibrate scores to LLRs, or fuse systems (trained late fusion)."),
    "ablate": ("pipeline.cli.ablate", "ablate_cmd", "Head x mode table, missing-modality and clip-length ablations."),
    "analyze": ("pipeline.cli.analyze", "analyze_cmd", "Embedding analysis report: angles, silhouettes, projections, DET."),
}


#: OSErrors of a file that cannot be written or read (read-only, full, too long, a folder, no
#: permission) that no command turned into an AvfuseError: one line, not a traceback
WRITE_ERRNOS = {errno.EROFS, errno.ENOSPC, errno.EFBIG, errno.EDQUOT, errno.ENAMETOOLONG, errno.EISDIR,
                errno.ENOTDIR, errno.EACCES, errno.EPERM}


def _available(name: str) -> bool:
    module = COMMANDS[name][0]
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


class LazyGroup(click.Group):
    def list_commands(self, ctx):
        return [n for n in COMMANDS if _available(n)] + sorted(self.commands)

    def get_command(self, ctx, name):
        if name in self.commands:
            return self.commands[name]
        if name not in COMMANDS or not _available(name):
            return None
        module, attr, _ = COMMANDS[name]
        return getattr(importlib.import_module(module), attr)

    def format_commands(self, ctx, formatter):
        rows = [(n, COMMANDS[n][2] if n in COMMANDS else (self.commands[n].get_short_help_str()))
                for n in self.list_commands(ctx)]
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="avfuse")
@click.option("--debug", is_flag=True, help="Show full tracebacks instead of one-line errors.")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """avfuse: audio-visual person verification on cached embeddings.

    \b
    Stage 1 (GPU box, once):  avfuse manifest -> avfuse extract
    Stage 2 (seconds):        avfuse train -> avfuse score -> avfuse evaluate / ablate / analyze
    New here? `avfuse demo` runs it all on a synthetic toy corpus.
    """
    ctx.ensure_object(dict)
    ctx.obj["debug"] = debug


#: commands whose interrupted work is kept and resumed by a rerun; ablate keeps its trained heads;
#: the others write nothing (their outputs are written whole, atomically, at the end)
RESUMABLE = ("extract", "manifest", "synth", "demo")


def _interrupted(args: list[str]) -> None:
    name = next((a for a in args if not a.startswith("-")), "")
    if name in RESUMABLE:
        click.echo("avfuse: interrupted (work finished so far is kept; rerun to resume)", err=True)
    elif name == "ablate":
        click.echo("avfuse: interrupted; heads trained so far are kept in OUT/heads (pass --runs OUT/heads "
                   "to reuse them); the tables are written at the end", err=True)
    else:
        click.echo(f"avfuse: interrupted; {name or 'the command'} wrote nothing (outputs are written whole "
                   f"at the end); rerun it to start over", err=True)
    sys.exit(130)


def main(argv: list[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args
    try:
        rv = cli.main(args=args, prog_name="avfuse", standalone_mode=False)
    except AvfuseError as e:
        if debug:
            raise
        click.echo(f"avfuse: error: {e}", err=True)
        sys.exit(2)
    except click.exceptions.Abort as e:
        # click raises Abort for a KeyboardInterrupt *and* for any EOFError (a truncated .gz)
        cause = e.__cause__ or e.__context__
        if isinstance(cause, EOFError) and not debug:
            click.echo(f"avfuse: error: an input file ended early ({cause or 'EOFError'}) -- is a "
                       f"compressed input truncated? re-download or regenerate it", err=True)
            sys.exit(2)
        _interrupted(args)
    except KeyboardInterrupt:
        _interrupted(args)
    except click.ClickException as e:
        e.show()
        sys.exit(e.exit_code)
    except OSError as e:
        if debug or e.errno not in WRITE_ERRNOS:
            raise
        err = AvfuseError(f"cannot access: {e.strerror or e}", path=e.filename,
                          hint="check the path and its permissions (and free disk space if it is full)")
        click.echo(f"avfuse: error: {err}", err=True)
        sys.exit(2)
    except SystemExit:
        raise
    else:
        # with standalone_mode=False click returns ctx.exit(code)'s code instead of exiting
        sys.exit(rv if isinstance(rv, int) else 0)


if __name__ == "__main__":  # pragma: no cover
    main()

"""Every ``avfuse`` command line in the README's code blocks names a real command (and
sub-command) and only options that command has, so the first page a newcomer reads cannot
drift from the CLI. Shell variables in the README (``B="..."``) are expanded; comments,
continuations, ``&&`` chains and ``for ...; do ...; done`` loops are handled."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import click

from pipeline.cli.main import cli

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_commands() -> list[list[str]]:
    blocks, lang, cur = [], None, []
    for raw in README.read_text().splitlines(keepends=True):     # fences paired in order, any language
        if raw.startswith("```"):
            if lang is None:
                lang, cur = raw[3:].strip(), []
            else:
                if lang in ("", "bash", "sh"):
                    blocks.append("".join(cur))
                lang = None
        elif lang is not None:
            cur.append(raw)
    out = []
    for block in blocks:
        lines, env = block.replace("\\\n", " ").splitlines(), {}
        for line in lines:
            line = line.split("  #")[0].split("   #")[0]
            if line.lstrip().startswith("#"):
                continue
            m = re.match(r'^\s*([A-Z_]+)="([^"]*)"\s*$', line)
            if m:
                env[m.group(1)] = m.group(2)
                continue
            for name, value in env.items():
                line = line.replace(f"${name}", value)
            for part in re.split(r"&&|;|\bdo\b|\bdone\b", line):
                words = shlex.split(part, comments=True)
                if words and words[0] == "avfuse":
                    out.append(words[1:])
    return out


def resolve(words: list[str]) -> tuple[click.Command, list[str]]:
    cmd, rest = cli, list(words)
    while isinstance(cmd, click.Group) and rest and not rest[0].startswith("-"):
        sub = cmd.get_command(click.Context(cmd), rest[0])
        known = sorted(cmd.list_commands(click.Context(cmd)))
        assert sub is not None, f"`avfuse {' '.join(words)}`: no command {rest[0]!r} in {known}"
        cmd, rest = sub, rest[1:]
    return cmd, rest


def test_the_readme_has_commands_to_check():
    cmds = readme_commands()
    assert len(cmds) >= 15 and any(c[:1] == ["extract"] for c in cmds)
    assert any(c[:2] == ["cache", "import"] for c in cmds)


def test_every_readme_command_and_option_exists():
    problems = []
    for words in readme_commands():
        cmd, rest = resolve(words)
        known = {o for p in cmd.params for o in getattr(p, "opts", []) + getattr(p, "secondary_opts", [])}
        for w in rest:
            flag = w.split("=", 1)[0]
            if flag.startswith("-") and flag not in known:
                problems.append(f"`avfuse {' '.join(words)}`: {flag} is not an option of `{cmd.name}`")
    assert not problems, "\n".join(problems)


def help_examples() -> list[list[str]]:
    """The ``avfuse ...`` example lines in every command's ``--help`` text."""
    out = []

    def walk(cmd):
        if isinstance(cmd, click.Group):
            for name in cmd.list_commands(click.Context(cmd)):
                walk(cmd.get_command(click.Context(cmd), name))
        text = (cmd.help or "").replace("\\\\\n", " ").replace("\\\n", " ")
        for line in text.splitlines():
            line = line.strip()
            if line.startswith("avfuse "):
                words = shlex.split(line, comments=True)
                out.append(words[1:])
    walk(cli)
    return out


def test_every_help_example_uses_real_options():
    examples = help_examples()
    assert len(examples) >= 10
    problems = []
    for words in examples:
        cmd, rest = resolve(words)
        known = {o for p in cmd.params for o in getattr(p, "opts", []) + getattr(p, "secondary_opts", [])}
        problems += [f"`avfuse {' '.join(words)}`: {w.split('=', 1)[0]} is not an option of `{cmd.name}`"
                     for w in rest if w.startswith("-") and w.split("=", 1)[0] not in known]
    assert not problems, "\n".join(problems)

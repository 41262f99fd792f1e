"""mkdocs hook: each command page's usage and options are drawn from the real argparse parser at build time, so the
pages cannot drift from the CLI (`xferlab.cli.build_parser`, the parser `xferlab COMMAND --help` prints).

A page writes `<!-- xferlab-options: train -->` where the options of `xferlab train` belong, and
`<!-- xferlab-commands -->` for the table of every command. A command without its page docs/commands/NAME.md, or a
marker naming no command, stops the build (mkdocs build --strict runs in `make test`).

Written by hand because no maintained mkdocs plugin renders an argparse parser (mkdocs-click is for click; the
argparse ones on PyPI are single releases); it reads argparse's own formatter, so help text, defaults and choices are
exactly what `--help` shows.
"""

from __future__ import annotations

import argparse
import html
import re
import sys
from functools import cache
from pathlib import Path

from mkdocs.exceptions import PluginError

ROOT = Path(__file__).resolve().parents[2]
OPTIONS = re.compile(r"<!-- xferlab-options: ([a-z]+) -->")
COMMANDS = "<!-- xferlab-commands -->"
COMMAND_PAGES = "commands"


@cache
def _commands() -> dict[str, tuple[argparse.ArgumentParser, str]]:
    """command name -> (its parser, its one-line help), from this checkout's sources (not an installed xferlab)."""
    sys.path.insert(0, str(ROOT / "src"))
    from xferlab.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    helps = {a.dest: a.help or "" for a in sub._choices_actions}
    return {name: (p, helps[name]) for name, p in sub.choices.items()}


def _escape(text: str) -> str:
    """Help text as Markdown table-cell text: `code spans` kept, everything else shown literally (help text holds
    <class>, globs such as 'timm:vit_*' and 80%)."""
    parts = re.split(r"(`[^`]*`)", text)
    out = []
    for i, part in enumerate(parts):
        if i % 2:
            out.append(part.replace("|", r"\|"))
        else:
            out.append(re.sub(r"([\\*_\[\]|#])", r"\\\1", html.escape(part, quote=False)))
    return "".join(out)


def _options_table(parser: argparse.ArgumentParser) -> str:
    """The usage line, then one table per argument group (positionals, options, data, training, ...)."""
    formatter = parser._get_formatter()  # the command's own formatter: its help strings and default rule
    lines = ["```text", parser.format_usage().strip(), "```", ""]
    for group in parser._action_groups:
        actions = [a for a in group._group_actions if a.help is not argparse.SUPPRESS
                   and not isinstance(a, argparse._HelpAction)]
        if not actions:
            continue
        lines += [f"**{_escape(group.title)}**", "", "| argument | what it does |", "|---|---|"]
        for action in actions:
            invocation = formatter._format_action_invocation(action)
            required = " (required)" if action.required and action.option_strings else ""
            text = formatter._expand_help(action) if action.help else ""
            lines.append(f"| `{invocation}`{required} | {_escape(' '.join(text.split()))} |")
        lines.append("")
    return "\n".join(lines)


def _commands_table() -> str:
    rows = [f"| [`xferlab {name}`]({name}.md) | {_escape(text)} |" for name, (_, text) in _commands().items()]
    return "\n".join(["| command | what it does |", "|---|---|", *rows])


def on_files(files, config):
    """Every command has its page: a new subcommand without docs/commands/NAME.md stops the build."""
    missing = [n for n in _commands() if files.get_file_from_path(f"{COMMAND_PAGES}/{n}.md") is None]
    if missing:
        raise PluginError(f"no page for the command(s) {', '.join(missing)}: add docs/{COMMAND_PAGES}/NAME.md with "
                          f"'<!-- xferlab-options: NAME -->' and add it to mkdocs.yml's nav")
    return files


def on_page_markdown(markdown: str, page, config, files) -> str:
    def options(match: re.Match) -> str:
        name = match.group(1)
        if name not in _commands():
            raise PluginError(f"{page.file.src_uri}: '{match.group(0)}' names no xferlab command; commands: "
                              f"{', '.join(_commands())}")
        return _options_table(_commands()[name][0])

    markdown = OPTIONS.sub(options, markdown)
    return markdown.replace(COMMANDS, _commands_table())

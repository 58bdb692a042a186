"""`bpfsync completion bash|zsh|man`: shell completion (shtab, from the parser) and the man
page (roff, from the parser): both made from the same parser the command line runs, so
neither can list an option that does not exist. packaging/install.sh installs all three."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from reconciler.cli.common import EXIT_OK

EXIT_STATUS = [
    ("0", "success: valid, in sync (diff), healthy (status), done."),
    ("1", "an error, including a usage error (a mistyped flag or subcommand); invalid input "
          "(validate); refused (destroy); no daemon (status)."),
    ("2", "changes pending (diff); degraded (status). Never a usage error."),
]
ENVIRONMENT = [
    ("BPFSYNC_PIN_ROOT", "the pin root when --pin-root is not given (default "
                         "/sys/fs/bpf/bpfsync)."),
]


def _roff(text: str) -> str:
    """Text safe in a roff line: backslashes and leading dots or quotes escaped."""
    text = text.replace("\\", "\\e").replace("-", "\\-")
    return "\\&" + text if text[:1] in (".", "'") else text


def _options(parser: argparse.ArgumentParser, skip: set[str]) -> list[str]:
    out = []
    for action in parser._actions:
        if action.help == argparse.SUPPRESS or not action.option_strings:
            continue
        if set(action.option_strings) & skip:
            continue
        flags = ", ".join(action.option_strings)
        if action.nargs != 0:
            flags += " " + (action.metavar or (
                "{" + ",".join(map(str, action.choices)) + "}" if action.choices
                else action.dest.upper()))
        out += [".TP", f"\\fB{_roff(flags)}\\fR", _roff(action.help or "")]
    return out


def man_page(parser: argparse.ArgumentParser, version: str) -> str:
    """The man page (section 1) of the parser: synopsis, global options, every subcommand
    with its arguments and options, exit status, environment."""
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    lines = [f'.TH BPFSYNC 1 "" "bpfsync {_roff(version)}" "User Commands"', ".SH NAME",
             "bpfsync \\- " + _roff(parser.description or ""), ".SH SYNOPSIS",
             "\\fBbpfsync\\fR [\\fIglobal options\\fR] \\fICOMMAND\\fR [\\fIargs\\fR]",
             ".SH GLOBAL OPTIONS",
             "Given before or after the command.", *_options(parser, {"-h"}),
             ".SH COMMANDS"]
    helps = {a.dest: a.help for a in sub._choices_actions}
    globals_ = {s for a in parser._actions for s in a.option_strings}
    for name, p in sub.choices.items():
        if p.description is None and helps.get(name) is None:
            continue
        usage = p.format_usage().removeprefix("usage: ").strip()
        lines += [".SS " + _roff(name), f"\\fB{_roff(' '.join(usage.split()))}\\fR", ".PP",
                  _roff(helps.get(name) or ""), *([".PP", _roff(p.description)]
                                                 if p.description else [])]
        for action in p._actions:
            if not action.option_strings and action.help != argparse.SUPPRESS and not (
                    isinstance(action, argparse._SubParsersAction)):
                lines += [".TP", f"\\fI{_roff(action.metavar or action.dest)}\\fR",
                          _roff(action.help or "")]
        lines += _options(p, globals_)
    lines.append(".SH EXIT STATUS")
    for code, meaning in EXIT_STATUS:
        lines += [".TP", f"\\fB{code}\\fR", _roff(meaning)]
    lines.append(".SH ENVIRONMENT")
    for name, meaning in ENVIRONMENT:
        lines += [".TP", f"\\fB{name}\\fR", _roff(meaning)]
    lines += [".SH SEE ALSO", "The README of bpfsync; \\fBbpfsync explain\\fR \\fIKIND\\fR."]
    return "\n".join(lines) + "\n"


def cmd_completion(args: argparse.Namespace) -> int:
    from reconciler.cli.main import parser
    from reconciler.version import version

    if args.shell == "man":
        sys.stdout.write(man_page(parser(), version()))
        return EXIT_OK
    import shtab

    sys.stdout.write(shtab.complete(parser(), shell=args.shell))
    return EXIT_OK


def add(sub: Any) -> None:
    """The parser of completion."""
    c = sub.add_parser("completion", help="print shell completion (bash, zsh) or the man page "
                                          "(man), made from this command line's parser",
                       description="e.g. bpfsync completion bash > "
                                   "/usr/local/share/bash-completion/completions/bpfsync")
    c.add_argument("shell", choices=["bash", "zsh", "man"])
    c.set_defaults(func=cmd_completion)

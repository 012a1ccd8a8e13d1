"""``argparse`` as every ``ironsight`` command uses it, and hints that name options.

| name                  | what                                                                  |
|-----------------------|-----------------------------------------------------------------------|
| :class:`Parser`       | no abbreviations, an unknown option's did-you-mean, a lazy epilog     |
| :func:`help_formatter` | the help layout of every command (100 columns, descriptions as written) |
| :func:`version_line`  | ``ironsight --version``                                               |
| :func:`fit_hints`     | an error's options rephrased for the command that printed it          |

The commands themselves are built by ``ironsight.jobs.cli.build_parser``.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import NoReturn

from ironsight.cluster.errors import close_matches


def help_formatter(prog: str) -> argparse.HelpFormatter:
    return argparse.RawDescriptionHelpFormatter(prog, max_help_position=32, width=100)


class Parser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` as every ``ironsight`` command uses it (subcommands inherit
    it through ``add_subparsers``).

    | what                       | plain argparse (3.11)          | here                            |
    |----------------------------|--------------------------------|---------------------------------|
    | ``--max-image 3``          | taken as ``--max-images``      | refused (``allow_abbrev=False``)|
    | an unknown option          | ``unrecognized arguments``,    | that command's usage and a      |
    |                            | with the root parser's usage   | did-you-mean among its options  |
    | ``invalid choice: 'gaet'`` | the choices                    | and ``did you mean 'gate'?``    |
    | ``epilog_factory``         |                                | builds the epilog for ``-h``    |
    """

    def __init__(self, *args: object, epilog_factory: Callable[[], str] | None = None, **kwargs: object) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.epilog_factory = epilog_factory

    def parse_known_args(self, args=None, namespace=None):  # type: ignore[no-untyped-def]
        ns, extras = super().parse_known_args(args, namespace)
        # The innermost (sub)command parser records itself; its namespace is copied upwards.
        if not hasattr(ns, _PARSER_ATTR):
            setattr(ns, _PARSER_ATTR, self)
        return ns, extras

    def parse_args(self, args=None, namespace=None):  # type: ignore[no-untyped-def]
        ns, extras = self.parse_known_args(args, namespace)
        owner: Parser = getattr(ns, _PARSER_ATTR, self)
        delattr(ns, _PARSER_ATTR)
        self.command_parser = owner  # the (sub)command that parsed them: fit_hints
        if extras:
            owner.error(f"unrecognized arguments: {' '.join(extras)}{owner.suggest_options(extras)}")
        return ns

    def option_strings(self) -> list[str]:
        """This parser's long options, ``--help`` included."""
        return [o for o in self._option_string_actions if o.startswith("--")]

    def suggest_options(self, words: Sequence[str]) -> str:
        """``; did you mean --max-images?`` for the unknown options among ``words``."""
        known = self.option_strings()
        hints = []
        for word in words:
            if not word.startswith("-"):
                continue
            flag = word.split("=", 1)[0]
            close = close_matches(flag, known)
            if close and close[0] not in hints:
                hints.append(close[0])
        return f"; did you mean {' or '.join(hints)}?" if hints else ""

    def error(self, message: str) -> NoReturn:
        choice = _INVALID_CHOICE.search(message)
        if choice:
            options = re.findall(r"'([^']*)'", choice.group(2))
            close = close_matches(choice.group(1), options)
            if close:
                message += f"; did you mean {close[0]!r}?"
        super().error(message)

    def format_help(self) -> str:
        if self.epilog_factory is not None and self.epilog is None:
            self.epilog = self.epilog_factory()
        return super().format_help()


_PARSER_ATTR = "_ironsight_parser"
_INVALID_CHOICE = re.compile(r"invalid choice: '(.*?)' \(choose from (.*)\)")


class VersionAction(argparse.Action):
    """``--version``: ``ironsight 0.1.0 (python 3.11.9, torch 2.14.1, ray 2.60.0)``, from the
    installed distributions' metadata (nothing is imported)."""

    def __init__(self, option_strings: list[str], dest: str = argparse.SUPPRESS, **kwargs: object) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS,
                         help="print Ironsight's version (and Python's, torch's and Ray's) and exit")

    def __call__(self, parser, namespace, values, option_string=None):  # type: ignore[no-untyped-def]
        print(version_line())
        parser.exit()


def version_line() -> str:
    """``ironsight X.Y.Z (python …, torch …, ray …)``; a missing distribution reads ``not installed``."""
    from importlib import metadata

    def version(dist: str) -> str:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return "not installed"

    python = ".".join(map(str, sys.version_info[:3]))
    return f"ironsight {version('ironsight')} (python {python}, torch {version('torch')}, ray {version('ray')})"


# --- hints that name options: only the ones the running command accepts ---------------------

_FLAG = re.compile(r"(?<![\w/.\-])--[a-z][a-z0-9]*(?:-[a-z0-9]+)*")
# Where an option has a setting every command reads, that is what a command without the option
# is told to set.
FLAG_ENV = {"--history-db": "IRONSIGHT_HISTORY_URL"}


def fit_hints(message: str, root: argparse.ArgumentParser) -> str:
    """Rephrase the options an error message names so that each works for the command that
    printed it (``root.command_parser``, set by :meth:`Parser.parse_args`).

    Library code names an option the way ``classify``/``audit`` spell it (``--skip-bad-files``,
    ``--overwrite``, ``--label-column``); a spec key is the same option with underscores.

    | the option named is …                                 | becomes                            |
    |-------------------------------------------------------|------------------------------------|
    | accepted by the command (or before it: ``--verbose``) | left as it is                      |
    | written with its command (``ironsight history --html``) | left as it is                    |
    | a spec key, and the command reads a spec (``run``,    | ``overwrite: true``,               |
    | ``validate``, ``submit``, ``schedule``, ``deploy``)   | ``weights: PATH_OR_URI``, ``name`` |
    | also an environment variable (:data:`FLAG_ENV`)       | that variable                      |
    | another command's option                              | ``ironsight CMD --flag``           |

    Words that are no ``ironsight`` option (a path ``x--y``) are left alone.

    >>> from ironsight.jobs.cli import build_parser
    >>> root = build_parser()
    >>> _ = root.parse_args(["run", "spec.yaml"])
    >>> fit_hints("fix them, or pass --skip-bad-files to leave them out", root)
    'fix them, or pass `skip_bad_files: true` to leave them out'
    >>> fit_hints("pass --weights PATH_OR_URI or --model-card CARD.yaml", root)
    'pass `weights: PATH_OR_URI` or `model_card: CARD.yaml`'
    >>> _ = root.parse_args(["models", "show", "x"])
    >>> fit_hints("not registered (or pass --model-card for your own)", root)
    'not registered (or pass `ironsight classify --model-card` for your own)'
    """
    owner = getattr(root, "command_parser", None)
    if not isinstance(owner, Parser) or not isinstance(root, Parser):
        return message
    accepted = set(owner.option_strings()) | set(root.option_strings())
    owners = _option_owners(root)
    spec_actions = _spec_actions(root) if _reads_spec(owner) else {}
    out: list[str] = []
    pos = 0
    for m in _FLAG.finditer(message):
        flag, (start, end) = m.group(0), m.span()
        if flag in accepted or flag not in owners or _named_with_command(message, start):
            continue
        quote = "" if message[start - 1:start] == "`" else "`"
        action = spec_actions.get(flag)
        if action is not None:
            metavar = action.metavar if isinstance(action.metavar, str) else None
            if action.nargs == 0:
                text = f"{action.dest}: true"
            elif metavar and message.startswith(f" {metavar}", end):
                text, end = f"{action.dest}: {metavar}", end + 1 + len(metavar)
            else:
                text = action.dest
            text = f"{quote}{text}{quote}"
        elif flag in FLAG_ENV:
            text = FLAG_ENV[flag]
        else:
            text = f"{quote}ironsight {owners[flag][0]} {flag}{quote}"
        out.append(message[pos:start] + text)
        pos = end
    fitted = "".join(out) + message[pos:]
    for env in FLAG_ENV.values():  # "IRONSIGHT_HISTORY_URL / --history-db" named it twice
        fitted = re.sub(rf"{env}(\s*(?:/|or)\s*){env}\b", env, fitted)
    return fitted


def _walk(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
          ) -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    """Every (sub)command parser under ``parser`` with its command words, ``parser`` first."""
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _walk(sub, (*path, name))


def _option_owners(root: argparse.ArgumentParser) -> dict[str, list[str]]:
    """``--flag`` -> the commands that accept it, in ``ironsight --help`` order."""
    owners: dict[str, list[str]] = {}
    for path, parser in _walk(root):
        if path and isinstance(parser, Parser):
            for flag in parser.option_strings():
                owners.setdefault(flag, []).append(" ".join(path))
    return owners


def _reads_spec(parser: argparse.ArgumentParser) -> bool:
    """The command reads a job spec: its positional is ``spec`` (run, validate, submit, ...)."""
    return any(not a.option_strings and a.dest == "spec" for a in parser._actions)


def _spec_actions(root: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    """``--flag`` -> its action in ``classify``/``audit``, for the options that are spec keys."""
    from ironsight.jobs.spec import SPEC_KINDS

    actions: dict[str, argparse.Action] = {}
    for path, parser in _walk(root):
        if len(path) == 1 and path[0] in SPEC_KINDS:
            for action in parser._actions:
                if action.dest in SPEC_KINDS[path[0]].model_fields:
                    for flag in action.option_strings:
                        actions.setdefault(flag, action)
    return actions


def _named_with_command(message: str, at: int) -> bool:
    """The option at ``at`` is written with its command (```ironsight history nightly --html```)."""
    since = max(message.rfind(c, 0, at) for c in "`\n;(")
    return "ironsight " in message[since + 1:at]

"""Exceptions shared by every layer; the CLI maps them to exit codes.

| exception     | meaning                                              | CLI exit |
|---------------|------------------------------------------------------|----------|
| InvalidInput  | bad usage, spec, corpus, model file: nothing ran     | 2        |
| JobFailed     | the job started and could not finish                 | 1        |
| GateFailed    | an audit ran but its release gate failed             | 3        |
"""

from __future__ import annotations


class IronsightError(Exception):
    """Base class: every message is meant to be shown to a user as is."""

    exit_code = 1


class InvalidInput(IronsightError):
    """The user's input (flags, spec, corpus, model file) is wrong; nothing was run."""

    exit_code = 2


class JobFailed(IronsightError):
    """The job started but could not finish; committed output stays valid."""

    exit_code = 1


class GateFailed(IronsightError):
    """An audit ran to completion and its release gate failed."""

    exit_code = 3

"""Exceptions shared by every layer, and the one table of exit codes every command returns.

| code | name                 | meaning                                                                | from |
|------|----------------------|------------------------------------------------------------------------|------|
| 0    | ``EXIT_OK``          | the command did its work (a job's error rows included)                 | |
| 1    | ``EXIT_FAILED``      | the job started and could not finish                                   | ``JobFailed``, any other error |
| 2    | ``EXIT_INVALID``     | bad usage, spec, corpus, model file or settings: nothing ran           | ``InvalidInput``, ``StorageError``, argparse |
| 3    | ``EXIT_GATE_FAILED`` | an audit ran and its release gate failed                               | ``GateFailed`` |
| 4    | ``EXIT_REGRESSED``   | a named audit regressed against the last succeeded run of its identity | ``ironsight.jobs.history`` |
| 130  | ``EXIT_INTERRUPTED`` | interrupted by Ctrl-C (128 + SIGINT); committed work is kept           | |
| 141  | ``EXIT_BROKEN_PIPE`` | stdout closed early (128 + SIGPIPE: output piped into ``head``)        | |
| 143  | ``EXIT_SIGTERM``     | stopped by SIGTERM (128 + SIGTERM); committed work is kept             | |

``EXIT_MEANINGS`` says each in a few words (``ironsight status`` shows a remote run's code with it).
"""

from __future__ import annotations

import difflib
import re
import signal
from collections.abc import Iterable

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_INVALID = 2
EXIT_GATE_FAILED = 3
EXIT_REGRESSED = 4  # distinct from 3: the gate passed (or there is none), the job got worse
EXIT_INTERRUPTED = 128 + signal.SIGINT  # 130, as a shell reports it
EXIT_BROKEN_PIPE = 128 + signal.SIGPIPE  # 141
EXIT_SIGTERM = 128 + signal.SIGTERM  # 143
EXIT_MEANINGS = {
    EXIT_OK: "succeeded",
    EXIT_FAILED: "failed",
    EXIT_INVALID: "invalid input or spec",
    EXIT_GATE_FAILED: "release gate failed",
    EXIT_REGRESSED: "regressed against the previous successful run",
    EXIT_INTERRUPTED: "interrupted",
    EXIT_BROKEN_PIPE: "stdout closed early",
    EXIT_SIGTERM: "stopped by SIGTERM",
}


class IronsightError(Exception):
    """Base class: every message is meant to be shown to a user as is."""

    exit_code = EXIT_FAILED


class InvalidInput(IronsightError):
    """The user's input (flags, spec, corpus, model file) is wrong; nothing was run."""

    exit_code = EXIT_INVALID


class JobFailed(IronsightError):
    """The job started but could not finish; committed output stays valid."""

    exit_code = EXIT_FAILED


class GateFailed(IronsightError):
    """An audit ran to completion and its release gate failed."""

    exit_code = EXIT_GATE_FAILED


# Terminal escapes Ray puts in task errors: CSI (colours, ``\x1b[36m``) and OSC (titles, links).
_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)|\x1b[@-Z\\-_]")
# "module.Name: message" lines of a traceback, where Name is an exception class.
_EXCEPTION_LINE = re.compile(
    r"^(?P<name>[A-Za-z_][\w.]*(?:Error|Exception|Failed|Input|Interrupt|Exit|Warning|Invalid))"
    r"(?:: (?P<message>.*))?$"
)


def strip_ansi(text: str) -> str:
    """``text`` without terminal escape sequences.

    >>> strip_ansi("\\x1b[36mray::MapBatches(f)()\\x1b[39m (pid=1)")
    'ray::MapBatches(f)() (pid=1)'
    """
    return _ANSI.sub("", text)


def ray_error_message(exc: BaseException) -> str:
    """What went wrong in a Ray task, in one plain line (more when the original said more).

    A ``RayTaskError``'s text starts with ``ray::Task()`` frames, colour codes and the whole
    remote traceback. An Ironsight error raised in the task (``JobFailed: reading f.parquet
    row group 3 failed: ...``) comes back as its message alone, even when it wraps another
    exception (the outermost of ours wins); otherwise the root cause, the first
    ``Name: message`` line that is not Ray's own wrapper, as ``Name: message``.

    >>> text = ("\\x1b[36mray::MapBatches(f)()\\x1b[39m (pid=9)\\n  File \\"x.py\\", line 1\\n"
    ...         "OSError: Couldn't deserialize thrift\\n\\n"
    ...         "The above exception was the direct cause of the following exception:\\n\\n"
    ...         "ironsight.cluster.errors.JobFailed: reading a.parquet row group 2 failed: bad\\n\\n"
    ...         "The above exception was the direct cause of the following exception:\\n\\n"
    ...         "ray.exceptions.UserCodeException: UDF failed to process a data block.")
    >>> ray_error_message(RuntimeError(text))
    'reading a.parquet row group 2 failed: bad'
    >>> ray_error_message(RuntimeError(text.replace("ironsight.cluster.errors.JobFailed", "ValueError")))
    "OSError: Couldn't deserialize thrift"
    >>> ray_error_message(RuntimeError("\\x1b[31mboom\\x1b[0m"))
    'boom'
    """
    lines = [line.rstrip() for line in strip_ansi(str(exc)).splitlines()]
    found: list[tuple[str, str]] = []  # (exception name, message), root cause first
    for i, line in enumerate(lines):
        match = _EXCEPTION_LINE.match(line)
        if match is None or match["name"].startswith("ray."):
            continue
        message = [match["message"] or ""]
        for more in lines[i + 1:]:  # a multi-line message runs to the next blank line
            if not more.strip():
                break
            message.append(more)
        found.append((match["name"], "\n".join(message).strip()))
    ours = [text for name, text in found if name.startswith("ironsight.cluster.errors.") and text]
    if ours:
        return ours[-1]
    if found:
        name, text = found[0]
        name = name.rsplit(".", 1)[-1]
        return f"{name}: {text}" if text else name
    meaningful = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("ray::")]
    return meaningful[0] if meaningful else type(exc).__name__


def close_matches(name: object, names: Iterable[str], *, n: int = 1, cutoff: float = 0.6) -> list[str]:
    """The ``n`` names most like ``name`` (:func:`difflib.get_close_matches`), best first.

    The one home of "which valid name did the user mean" (columns, conditions, keys, models,
    flags, files): messages built on it suggest alike. A light module, so a decode worker may
    use it without importing torch.

    >>> close_matches("lable", ["label", "image", "id"])
    ['label']
    """
    return difflib.get_close_matches(str(name), list(names), n=n, cutoff=cutoff)


def did_you_mean(name: object, names: Iterable[str], *, n: int = 1, cutoff: float = 0.6) -> str:
    """``"did you mean 'gaussian_blur'? "`` for the closest of ``names``, else ``""``: the
    start of the hint in a message about an unknown name (``...; {did_you_mean(...)}expected
    one of ...``).

    >>> did_you_mean("gausian_blur", ["fog", "gaussian_blur", "gaussian_noise"])
    "did you mean 'gaussian_blur'? "
    >>> did_you_mean("resnt", ["resnet50", "vit"], n=3, cutoff=0.5)
    "did you mean 'resnet50'? "
    >>> did_you_mean("xyz", ["fog"])
    ''
    """
    close = close_matches(name, names, n=n, cutoff=cutoff)
    return f"did you mean {', '.join(repr(c) for c in close)}? " if close else ""

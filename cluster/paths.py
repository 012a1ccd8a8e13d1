"""Allowed roots: the one rule that keeps every path of a job inside what the operator allows.

An operator confines jobs with ``IRONSIGHT_ALLOWED_ROOTS`` (local directories and/or
``s3://bucket/prefix`` roots, separated by ``,`` or ``:``); a job spec may narrow that with its
own ``allowed_roots:`` list, never widen it. With roots in force, every path-valued field of a
spec and every image a corpus row references by path must lie inside one root.

| path                         | normalised as                                   | inside ``root`` when          |
|------------------------------|-------------------------------------------------|-------------------------------|
| local (``/a``, ``./a``, ``file:///a``) | absolute, ``..`` folded, symlinks resolved (``os.path.realpath``) | equal to the root or under it at a ``/`` |
| ``s3://bucket/key``          | as written, trailing ``/`` dropped; a ``.`` or ``..`` segment is refused (S3 keys are literal, so ``a/../b`` would not mean ``b``) | same bucket, and the key equals the root's prefix or continues it at a ``/`` |

So ``/data/../etc/passwd`` and a symlink under ``/data`` pointing at ``/etc`` are both outside
``/data``, and ``s3://data-evil/x`` is outside ``s3://data``. A local path is never inside an
S3 root, nor the other way round. With no roots configured nothing is checked.

>>> check_within("s3://data/in/a.jpg", ("s3://data/in",)) is None
True
>>> check_within("s3://data-evil/a.jpg", ("s3://data",))
's3://data-evil/a.jpg is outside the allowed roots (s3://data)'

OUTPUT apart from INPUT (:func:`check_output`), decided on the same normalised forms before
any work starts (before Ray), for classify and for the audit:

| OUTPUT vs INPUT                         | why it is refused (exit 2)                                 |
|-----------------------------------------|------------------------------------------------------------|
| equal                                   | labels would land among the images and be read back as input |
| OUTPUT contains INPUT (``/``, a parent) | the corpus would live inside the job's output folder        |
| OUTPUT inside INPUT                     | the next run would plan OUTPUT's files as input              |
| OUTPUT an existing file (or under one)  | OUTPUT is a folder of part files                            |

For a glob INPUT (``/data/*/x.parquet``) OUTPUT may sit beside the matches
(``/data/out``) unless the pattern could match files under it.
"""

from __future__ import annotations

import fnmatch
import os
import posixpath
import re
from collections.abc import Iterable, Mapping
from urllib.parse import urlparse

from ironsight.cluster.errors import InvalidInput

ENV_ALLOWED_ROOTS = "IRONSIGHT_ALLOWED_ROOTS"
# "," or ":" separate roots; the ":" of "s3://" and "file://" does not.
_SEPARATORS = re.compile(r",|:(?!//)")

__all__ = ["ENV_ALLOWED_ROOTS", "check_output", "check_within", "normalize", "operator_roots", "parse_roots"]


def parse_roots(value: str | Iterable[str], *, source: str = ENV_ALLOWED_ROOTS) -> tuple[str, ...]:
    """Normalised roots from a ``,``/``:``-separated string or a list; empty entries dropped.

    Raises:
        InvalidInput: a root is not a local path or ``s3://bucket[/prefix]``; names ``source``.

    >>> parse_roots("s3://b/p/, s3://c")
    ('s3://b/p', 's3://c')
    """
    items = _SEPARATORS.split(value) if isinstance(value, str) else list(value)
    roots: list[str] = []
    for item in items:
        item = str(item).strip()
        if not item:
            continue
        try:
            root = normalize(item)
        except ValueError as exc:
            raise InvalidInput(f"{source}: root {item!r}: {exc}") from None
        if root not in roots:
            roots.append(root)
    return tuple(roots)


def operator_roots(environ: Mapping[str, str] | None = None) -> tuple[str, ...]:
    """The operator's roots from ``IRONSIGHT_ALLOWED_ROOTS``; empty when unset (no limit)."""
    env = os.environ if environ is None else environ
    return parse_roots(env.get(ENV_ALLOWED_ROOTS, ""))


def normalize(uri: str) -> str:
    """The canonical form that containment is decided on (see the module table).

    Raises:
        ValueError: an unsupported scheme, an S3 URI without a bucket or with ``.``/``..``
            segments.

    >>> normalize("s3://b/x/")
    's3://b/x'
    """
    uri = str(uri)
    if uri.startswith("s3://"):
        parsed = urlparse(uri)
        if not parsed.netloc:
            raise ValueError("names no bucket; expected s3://BUCKET/PREFIX")
        key = parsed.path.strip("/")
        if any(part in (".", "..") for part in key.split("/")):
            raise ValueError("has a '.' or '..' segment, which S3 does not resolve; write the key out")
        return f"s3://{parsed.netloc}" + (f"/{key}" if key else "")
    if "://" in uri and not uri.startswith("file://"):
        raise ValueError(f"unsupported scheme {uri.split('://', 1)[0]!r}; use a local path or s3://")
    local = uri[len("file://"):] if uri.startswith("file://") else uri
    return os.path.realpath(os.path.abspath(os.path.expanduser(local)))


def _inside(path: str, root: str) -> bool:
    if path.startswith("s3://") != root.startswith("s3://"):
        return False
    if root == "/":  # the whole local filesystem
        return True
    return path == root or path.startswith(root + "/")


def check_within(uri: str, roots: Iterable[str]) -> str | None:
    """None when ``uri`` lies inside one of ``roots`` (or no roots are given), else why not.

    ``roots`` must be normalised (:func:`parse_roots`). The reason names the path as written
    and the roots, for an error row or a spec error.

    >>> check_within("/data/../etc/passwd", ("/data",))
    '/data/../etc/passwd (resolves to /etc/passwd) is outside the allowed roots (/data)'
    """
    roots = tuple(roots)
    if not roots:
        return None
    try:
        path = normalize(uri)
    except ValueError as exc:
        return f"{uri} {exc}"
    if any(_inside(path, root) for root in roots):
        return None
    resolved = "" if path == uri else f" (resolves to {path})"
    return f"{uri}{resolved} is outside the allowed roots ({', '.join(roots)})"


_GLOB_CHARS = set("*?[")


def _split_glob(uri: str) -> tuple[str, list[str]]:
    """``(fixed prefix, pattern components after it)``; no components for a plain path."""
    scheme = "s3://" if uri.startswith("s3://") else ""
    body = uri[len(scheme):]
    parts = body.split("/")
    first = next((i for i, part in enumerate(parts) if any(c in _GLOB_CHARS for c in part)), None)
    if first is None:
        return uri, []
    fixed = "/".join(parts[:first]) or ("/" if body.startswith("/") else ".")
    return scheme + fixed, [p for p in parts[first:] if p]


def check_output(input_uri: str, output_uri: str, *, input_name: str = "INPUT") -> None:
    """Refuse an OUTPUT that is a file, or that equals, contains or lies inside the INPUT.

    Called when a classify or audit config is built, so a bad pair fails in a moment,
    before Ray starts and before anything is created. See the module table.

    Raises:
        InvalidInput: names both paths and says why they must be apart.

    >>> check_output("/data/in", "/data/out") is None
    True
    >>> check_output("s3://b/in", "s3://b/in-labels") is None
    True
    >>> check_output("s3://b/in", "s3://b/in/labels")
    Traceback (most recent call last):
    ...
    ironsight.cluster.errors.InvalidInput: OUTPUT s3://b/in/labels lies inside INPUT s3://b/in: every rerun would read the labels back as input; choose an OUTPUT outside s3://b/in
    """
    try:
        out = normalize(output_uri)
    except ValueError as exc:
        raise InvalidInput(f"OUTPUT {output_uri} {exc}") from None
    if not out.startswith("s3://"):
        _check_local_folder(output_uri, out)
    base, pattern = _split_glob(str(input_uri))
    try:
        inp = normalize(base)
    except ValueError:
        return  # the corpus planner reports a bad INPUT with its own message
    shown = input_uri if inp == input_uri or pattern else f"{input_uri} (resolves to {inp})"
    outside = f"choose an OUTPUT outside {inp if not pattern else base}"
    if out == inp and not pattern:
        raise InvalidInput(
            f"OUTPUT {output_uri} is the {input_name} folder {shown}: the labels would be written "
            f"among the images they label and read back as input by the next run; {outside}"
        )
    if _inside(inp, out):
        raise InvalidInput(
            f"OUTPUT {output_uri} contains {input_name} {shown}: Ironsight keeps its output apart "
            f"from the data it reads, so that its files never mix with (or, with --overwrite, "
            f"touch) the corpus; choose an OUTPUT that is not {input_name} or a folder above it"
        )
    if _inside(out, inp) and _could_match_under(out, inp, pattern):
        raise InvalidInput(
            f"OUTPUT {output_uri} lies inside {input_name} {shown}: every rerun would read the "
            f"labels back as input; {outside}"
        )


def _could_match_under(out: str, base: str, pattern: list[str]) -> bool:
    """Whether a file under ``out`` (inside ``base``) could be planned as input."""
    if not pattern:
        return True  # a folder INPUT takes every file under it
    rel = [p for p in out[len(base):].split("/") if p]
    return len(rel) < len(pattern) and all(
        fnmatch.fnmatchcase(part, pat) for part, pat in zip(rel, pattern, strict=False)
    )


def _check_local_folder(output_uri: str, path: str) -> None:
    """OUTPUT must be a folder or not exist yet, and no folder above it may be a file."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise InvalidInput(
            f"OUTPUT {output_uri} is a file, not a folder: Ironsight writes one Parquet file per "
            "shard into a folder; choose a folder (a new one is created)"
        )
    parent = posixpath.dirname(path)
    while parent and not os.path.exists(parent):
        parent = posixpath.dirname(parent) if parent != "/" else ""
    if parent and not os.path.isdir(parent):
        raise InvalidInput(
            f"OUTPUT {output_uri} lies under {parent}, which is a file, not a folder; choose a folder"
        )

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
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from urllib.parse import urlparse

from cluster.errors import InvalidInput

ENV_ALLOWED_ROOTS = "IRONSIGHT_ALLOWED_ROOTS"
# "," or ":" separate roots; the ":" of "s3://" and "file://" does not.
_SEPARATORS = re.compile(r",|:(?!//)")

__all__ = ["ENV_ALLOWED_ROOTS", "check_within", "normalize", "operator_roots", "parse_roots"]


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

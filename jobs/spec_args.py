"""The command line from the spec models: one option per field, parsed back into the model.

A field's ``json_schema_extra`` says how it appears on the command line (:func:`cli_option`):
positional or not, its metavar, whether a list field takes one option per item, and whether its
value is a path (``path``: checked against the allowed roots, resolved against a spec's folder).
``{"cli": None}`` keeps a field off the command line (``kind``).

| function              | does                                                              |
|-----------------------|-------------------------------------------------------------------|
| :func:`cli_option`    | the field metadata above                                          |
| :func:`is_path_field` | the field's value is a path (``cli_option(path=True)``)           |
| :func:`add_spec_arguments` | one ``argparse`` option per field; defaults stay in the model |
| :func:`spec_from_args` | parsed flags validated into the model; errors name the flag      |
"""

from __future__ import annotations

import argparse
import types
import typing
from typing import Any, Literal, Union

from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo

from ironsight.cluster.errors import InvalidInput


def cli_option(*, positional: bool = False, metavar: str | None = None, path: bool = False,
               repeat: bool = False) -> dict:
    """Field metadata: how the field appears on the command line; ``path`` marks a field whose
    value is a file, directory or ``s3://`` URI (checked against the allowed roots); ``repeat``
    a list field whose option is given once per item (``--model-card A.yaml --model-card B.yaml``)."""
    extra: dict = {"cli": {"positional": positional, "metavar": metavar, "repeat": repeat}}
    if path:
        extra["path"] = True
    return extra


def is_path_field(f: FieldInfo) -> bool:
    """The field's value is a file, directory or ``s3://`` URI (``cli_option(path=True)``)."""
    return bool(_extra(f).get("path"))


def _extra(f: FieldInfo | None) -> dict:
    return f.json_schema_extra if f is not None and isinstance(f.json_schema_extra, dict) else {}


def _unwrap(tp: Any) -> tuple[Any, bool]:
    """(inner type, optional?) of ``X | None``."""
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return (args[0] if len(args) == 1 else tp), True
    return tp, False


def add_spec_arguments(parser: argparse.ArgumentParser, model: type[BaseModel]) -> None:
    """Add one option per spec field (positional where the field says so).

    Defaults are left to the model (argparse.SUPPRESS), so the spec is the only place a
    default lives; the help text shows it.
    """
    for name, f in model.model_fields.items():
        extra = _extra(f)
        if "cli" in extra and extra["cli"] is None:
            continue
        cli = extra.get("cli") or {}
        tp, _ = _unwrap(f.annotation)
        flag = "--" + name.replace("_", "-")
        default_txt = "" if f.is_required() or f.default in (None, False) else f" (default: {f.default})"
        help_txt = (f.description or "") + default_txt
        kwargs: dict[str, Any] = {"help": help_txt, "default": argparse.SUPPRESS}
        if cli.get("repeat"):
            kwargs["action"] = "append"
        if tp is bool and f.default is True:  # on by default: the flag turns it off
            flag, help_txt = "--no-" + name.replace("_", "-"), f.description or ""
            kwargs.update(action="store_false", help=help_txt)
        elif tp is bool:
            kwargs["action"] = "store_true"
        else:
            if typing.get_origin(tp) is Literal:
                kwargs["choices"] = list(typing.get_args(tp))
            elif tp in (int, float):
                kwargs["type"] = tp
            kwargs["metavar"] = cli.get("metavar") or name.upper()
        if cli.get("positional"):
            kwargs.pop("default")
            parser.add_argument(name, **kwargs)
        else:
            parser.add_argument(flag, dest=name, **kwargs)


def spec_from_args(model: type[BaseModel], args: argparse.Namespace) -> Any:
    """Validate parsed flags into the spec model; errors name the flag."""
    values = {k: v for k, v in vars(args).items() if k in model.model_fields}
    try:
        return model.model_validate(values)
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            loc = [str(p) for p in err["loc"]]
            where = _flag(model, loc[0]) if loc else "arguments"
            lines.append(f"{where}: {err['msg'].removeprefix('Value error, ')}")
        raise InvalidInput("\n".join(lines)) from exc


def _flag(model: type[BaseModel], name: str) -> str:
    """How a field is written on the command line: ``--top-k``, or ``INPUT`` for a positional."""
    f = model.model_fields.get(name)
    cli = _extra(f).get("cli") or {}
    if cli.get("positional"):
        return cli.get("metavar") or name.upper()
    return "--" + name.replace("_", "-")

"""One YAML loader for every configuration file: model cards, job specs, suites, gates.

:func:`load_yaml` reads a file (local path or ``s3://``) through :func:`ironsight.cluster.storage.read_bytes`,
so only regular files are read (a FIFO, ``/dev/zero`` or ``/proc/...`` is refused before it is
opened) and never more than ``max_bytes``; :func:`parse_yaml` parses text with a
``yaml.SafeLoader`` that bounds what a hostile document can cost:

| limit                  | value                   | what happens past it                           |
|------------------------|-------------------------|------------------------------------------------|
| file size              | 1 MiB (``MAX_CONFIG_BYTES``) | refused before parsing, naming the cap     |
| nesting depth          | 100 (``MAX_DEPTH``), aliases expanded | refused at the node that goes deeper, without recursing into it |
| values after aliases   | 100,000 (``MAX_NODES``) | refused while composing ("billion laughs"): a few ms, a few MB |
| an alias inside its own anchor | refused         | a cyclic value that nothing downstream can validate |
| duplicate mapping keys | refused                 | naming the key and both lines (YAML would keep the last silently) |
| quoted text in errors  | 80 characters (``SNIPPET_CHARS``) | cut with "..." and the count left out |
| one validation message | 300 characters (``MAX_MESSAGE_CHARS``) | cut the same way (a validator may quote a value) |
| validation problems    | 20 per file (``MAX_PROBLEMS``) | "... and N more problems" |

The last two rows are for the callers, which validate the loaded data with pydantic and
format each problem themselves: the field path and message cut with :func:`clip`, a value
(if any) through :func:`short_repr` (:mod:`reprlib`: 6 items, 3 levels), the list cut with
:func:`first_problems`.

Every problem is a :class:`ConfigInvalid` (an :class:`~ironsight.cluster.errors.InvalidInput`,
exit 2; :class:`YamlRefused` for the limits) whose message starts with the caller's ``source`` (``gate file g.yaml``) and
gives the line and column; a message never quotes more than ``SNIPPET_CHARS`` of the input
and never a full ``repr`` of a loaded value (that of a small aliased document can be
gigabytes). A stream holds one document, as for ``yaml.safe_load``.

:func:`check_config_file` applies the file rules alone, without reading: a job spec uses it
to refuse a card, suite or gate that is a FIFO, a device or too large before Ray starts.

>>> parse_yaml("a: 1\\nb: [x, y]\\n", source="example")
{'a': 1, 'b': ['x', 'y']}
>>> parse_yaml("a: 1\\na: 2\\n", source="gate file g.yaml")
Traceback (most recent call last):
...
ironsight.cluster.yamlfile.ConfigInvalid: gate file g.yaml is not valid YAML: line 2, column 1: key 'a' appears twice (first on line 1); give each key once
"""

from __future__ import annotations

import os
import reprlib
import typing
from collections.abc import Iterable
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError
from yaml.events import AliasEvent
from yaml.nodes import MappingNode, ScalarNode

from ironsight.cluster import storage
from ironsight.cluster.errors import InvalidInput, did_you_mean

MAX_CONFIG_BYTES = 1 << 20  # 1 MiB: room for a card listing some 20,000 class names
MAX_DEPTH = 100
MAX_NODES = 100_000
SNIPPET_CHARS = 80
MAX_MESSAGE_CHARS = 300
MAX_PROBLEMS = 20

_MERGE_TAG = "tag:yaml.org,2002:merge"


def clip(text: str, limit: int = SNIPPET_CHARS) -> str:
    """``text`` cut to ``limit`` characters, saying how many were left out.

    >>> clip("x" * 100, 10)
    'xxxxxxxxxx... (90 more characters)'
    """
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text) - limit:,} more characters)"


def first_problems(lines: list[str], limit: int = MAX_PROBLEMS) -> list[str]:
    """The first ``limit`` lines, then one saying how many more there are.

    >>> first_problems(["a", "b", "c"], 2)
    ['a', 'b', '... and 1 more problem']
    """
    if len(lines) <= limit:
        return lines
    more = len(lines) - limit
    return [*lines[:limit], f"... and {more:,} more problem{'s' if more != 1 else ''}"]


def _bounded_repr() -> reprlib.Repr:
    r = reprlib.Repr()
    r.maxlevel, r.maxtuple, r.maxlist, r.maxset, r.maxfrozenset = 3, 6, 6, 6, 6
    r.maxdict, r.maxstring, r.maxlong, r.maxother = 6, SNIPPET_CHARS, 40, SNIPPET_CHARS
    return r


_REPR = _bounded_repr()


def short_repr(value: Any, limit: int = SNIPPET_CHARS) -> str:
    """A bounded ``repr`` for error messages: at most 6 items of a container, 3 levels deep.

    A loaded YAML value may share one list a billion times over (aliases), so its full
    ``repr`` is never computed (:mod:`reprlib` stops early).

    >>> short_repr([2]), short_repr(list(range(100))), short_repr("x" * 200, 20)
    ('[2]', '[0, 1, 2, 3, 4, 5, ...]', "'xxxxxxxxxxxxxxxxxxxx'... (180 more characters)")
    """
    if isinstance(value, str):
        if len(value) <= limit:
            return repr(value)
        return f"{value[:limit]!r}... ({len(value) - limit:,} more characters)"
    try:
        text = _REPR.repr(value)
    except ValueError:  # an int past Python's digit limit
        return f"a {type(value).__name__} too large to print"
    return text if len(text) <= limit else f"{text[:limit]}..."


class ConfigInvalid(InvalidInput):
    """A configuration file (model card, job spec, gate, suite) that cannot be used: unreadable,
    not YAML, over a limit, or a field its kind's model refuses. The one error of this
    module's loaders; every message starts with the file (``gate file g.yaml``) and, for a
    field, names its path (``gate file g.yaml: clean_acc: unknown key; ...``). Exit 2."""


class YamlRefused(ConfigInvalid):
    """A document over a limit of the module table (it may be valid YAML): too deep, too many
    values after aliases, an alias cycle."""


class _Refused(yaml.MarkedYAMLError):
    """A limit of :class:`_BoundedLoader` (the document may be valid YAML)."""


class _Duplicate(yaml.MarkedYAMLError):
    """A mapping names a key twice."""


class _BoundedLoader(yaml.SafeLoader):
    """``SafeLoader`` with the limits of the module table, checked while composing.

    Composing is where aliases are resolved and where the nesting recurses, so both are
    counted there: every node adds 1 to the expanded count, every alias adds the expanded
    size of the node it names (known once that node is complete), and a node is refused
    before its children are composed when it would be deeper than ``MAX_DEPTH``.
    """

    max_depth = MAX_DEPTH
    max_nodes = MAX_NODES

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._reset_limits()

    def _reset_limits(self) -> None:
        self._expanded = 0
        self._sizes: dict[int, int] = {}  # id(node) -> expanded nodes under it, itself included
        self._heights: dict[int, int] = {}  # id(node) -> levels under it, itself included
        self._child_height: list[int] = []  # per open node: the tallest child so far

    def compose_document(self) -> Any:
        try:
            return super().compose_document()
        finally:
            self._reset_limits()

    def _count(self, n: int, mark: Any) -> None:
        self._expanded += n
        if self._expanded > self.max_nodes:
            raise _Refused(
                None, None,
                f"its aliases expand to more than {self.max_nodes:,} values (an alias bomb, "
                "\"billion laughs\"?); write the values out, or split the file",
                mark,
            )

    def _grow(self, height: int) -> None:
        if self._child_height and height > self._child_height[-1]:
            self._child_height[-1] = height

    def compose_node(self, parent: Any, index: Any) -> Any:
        depth = len(self._child_height)  # levels above the node being composed
        if self.check_event(AliasEvent):
            event = self.peek_event()
            target = self.anchors.get(event.anchor)
            if target is not None:
                size = self._sizes.get(id(target))
                if size is None:
                    raise _Refused(
                        None, None,
                        f"alias *{clip(str(event.anchor), 40)} is inside the value it names "
                        "(a cycle); a configuration value must be a tree",
                        event.start_mark,
                    )
                height = self._heights[id(target)]
                if depth + height > self.max_depth:
                    self._too_deep(event.start_mark)
                self._count(size, event.start_mark)
                self._grow(height)
            return super().compose_node(parent, index)  # undefined aliases: yaml's own error
        mark = self.peek_event().start_mark
        if depth + 1 > self.max_depth:
            self._too_deep(mark)
        start = self._expanded
        self._count(1, mark)
        self._child_height.append(0)
        try:
            node = super().compose_node(parent, index)
        finally:
            height = 1 + self._child_height.pop()
        self._sizes[id(node)] = self._expanded - start
        self._heights[id(node)] = height
        self._grow(height)
        return node

    def _too_deep(self, mark: Any) -> None:
        raise _Refused(
            None, None,
            f"values are nested more than {self.max_depth} levels deep (aliases included)",
            mark,
        )

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        if isinstance(node, MappingNode):
            first_line: dict[Any, int] = {}
            for key_node, _ in node.value:
                if not isinstance(key_node, ScalarNode) or key_node.tag == _MERGE_TAG:
                    continue  # merged keys may be overridden; complex keys are yaml's problem
                key = self.construct_object(key_node, deep=False)
                try:
                    line = first_line.get(key)
                except TypeError:
                    continue
                if line is not None:
                    raise _Duplicate(
                        None, None,
                        f"key {short_repr(key)} appears twice (first on line {line + 1}); "
                        "give each key once",
                        key_node.start_mark,
                    )
                first_line[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)

    def construct_object(self, node: Any, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep=deep)
        except (ValueError, OverflowError) as exc:  # 2024-02-30, a 5000-digit int, ...
            raise yaml.constructor.ConstructorError(
                None, None, f"cannot read this value: {clip(str(exc))}", node.start_mark
            ) from None


def _where(mark: Any) -> str:
    return f"line {mark.line + 1}, column {mark.column + 1}" if mark is not None else "somewhere"


def _describe(exc: yaml.YAMLError) -> str:
    """``line L, column C: problem`` from a yaml error, every quoted part clipped."""
    if isinstance(exc, yaml.MarkedYAMLError):
        mark = exc.problem_mark or exc.context_mark
        problem = exc.problem or "cannot be parsed"
        if not isinstance(exc, (_Refused, _Duplicate)):
            problem = clip(problem)
        context = f"{clip(exc.context)}, " if exc.context else ""
        return f"{_where(mark)}: {context}{problem}"
    if isinstance(exc, yaml.reader.ReaderError):
        char = exc.character
        code = f"#x{ord(char):04x}" if isinstance(char, str) else f"#x{char:02x}"
        return f"character {exc.position + 1:,}: {code} is not allowed in YAML ({clip(exc.reason)})"
    return clip(str(exc))


def parse_yaml(text: str, *, source: str) -> Any:
    """The data of YAML ``text`` (first document), under the limits of the module table.

    Args:
        text: the YAML.
        source: how messages name the text, e.g. ``"gate file g.yaml"``; every message
            starts with it.

    Raises:
        YamlRefused: too deep, too many values after aliases, an alias cycle (a ConfigInvalid).
        ConfigInvalid: not YAML, a duplicate key, or a scalar Python cannot represent; the
            message gives the line and column.
    """
    loader = None
    try:
        loader = _BoundedLoader(text)  # the reader checks every character here
        return loader.get_single_data()
    except _Refused as exc:
        raise YamlRefused(f"{source} is refused: {_describe(exc)}") from None
    except yaml.YAMLError as exc:
        raise ConfigInvalid(f"{source} is not valid YAML: {_describe(exc)}") from None
    except RecursionError:  # not expected under MAX_DEPTH; never a traceback
        raise YamlRefused(f"{source} is refused: values are nested too deeply") from None
    finally:
        if loader is not None:
            loader.dispose()


def check_config_file(uri_or_path: str, *, what: str, max_bytes: int = MAX_CONFIG_BYTES) -> None:
    """Refuse, without opening it, a local file that :func:`load_yaml` would refuse for its
    kind or size: a FIFO, socket, device, ``/proc``/``/sys``/``/dev`` file, a directory, or
    one larger than ``max_bytes``.

    For early checks (a job spec naming a card, suite or gate is refused before Ray starts).
    A path that does not exist here, or an ``s3://`` URI, passes: it may exist only where the
    job runs, and :func:`load_yaml` checks it again when it is read.

    Raises:
        ConfigInvalid: naming ``what``, the path and the reason.
    """
    name = str(uri_or_path)
    if "://" in name and not name.startswith("file://"):
        return
    path = name.removeprefix("file://")
    if not os.path.lexists(path):
        return
    try:
        st = storage.check_regular_file(path, what)
    except (FileNotFoundError, PermissionError):  # a dangling link, an unreadable folder
        return
    except ConfigInvalid:
        raise
    except InvalidInput as exc:
        raise ConfigInvalid(str(exc)) from None
    if st.st_size > max_bytes:
        raise ConfigInvalid(
            f"{what} {name} is larger than {max_bytes:,} bytes, the most Ironsight reads for "
            f"a {what}; is it the right file?"
        )


def load_yaml(uri_or_path: str, *, what: str, max_bytes: int = MAX_CONFIG_BYTES) -> Any:
    """Read and parse the YAML file at ``uri_or_path`` (local path or ``s3://``).

    Args:
        uri_or_path: the file.
        what: what the file is, for messages (``"model card"``, ``"gate file"``); every
            message starts with ``"{what} {uri_or_path}"``, the name as given.
        max_bytes: a larger file is refused without being read past ``max_bytes + 1``.

    Raises:
        ConfigInvalid: missing, unreadable, not a regular file, too large, not UTF-8, or any
            :func:`parse_yaml` problem.
        JobFailed: S3 stayed unreachable (from :func:`ironsight.cluster.storage_errors.with_retries`).
    """
    name = str(uri_or_path)  # as the user wrote it
    try:
        loc = storage.resolve(name)
        raw = storage.read_bytes(loc, max_bytes=max_bytes, what=what)
    except FileNotFoundError:
        raise ConfigInvalid(f"{what} {name} does not exist") from None
    except PermissionError:
        raise ConfigInvalid(f"{what} {name} cannot be read: permission denied") from None
    except IsADirectoryError:
        raise ConfigInvalid(f"{what} {name} is a directory; expected a YAML file") from None
    except ConfigInvalid:
        raise
    except InvalidInput as exc:  # not a regular file, too large, a bad URI: the same class
        raise ConfigInvalid(str(exc)) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigInvalid(
            f"{what} {name} is not UTF-8 text (byte {exc.start:,} is 0x{raw[exc.start]:02x}); "
            "is it the right file?"
        ) from None
    return parse_yaml(text, source=f"{what} {name}")


# --- validation: the kind's pydantic model, one message shape for every kind -----------------


def unknown_key_message(key: object, valid: Iterable[str]) -> str:
    """What to say about a key a file may not have: a did-you-mean and every valid key.

    >>> unknown_key_message("gaet", ["gate", "seed"])
    "unknown key; did you mean 'gate'? valid keys: gate, seed"
    """
    valid = list(valid)
    return f"unknown key; {did_you_mean(key, valid)}valid keys: {', '.join(valid)}"


def problem_lines(exc: ValidationError, source: str, model: type[BaseModel] | None = None,
                  *, root: str = "(file)") -> list[str]:
    """``{source}: {field.path}: {message}`` per problem of a pydantic ``exc``, the first
    :data:`MAX_PROBLEMS` of them, then a count.

    Values are never echoed (a spec may hold a secret; a loaded value may be huge): a
    message a validator built from a value is clipped to :data:`MAX_MESSAGE_CHARS`. An
    unknown key gets a did-you-mean and the valid keys of the model it was found in
    (``model`` at the top level).
    """
    lines = []
    for err in exc.errors(include_url=False, include_input=False):
        loc = clip(".".join(str(p) for p in err["loc"]) or root)
        msg = clip(err["msg"].removeprefix("Value error, "), MAX_MESSAGE_CHARS)
        if err["type"] == "extra_forbidden":
            valid = _fields_at(model, err["loc"][:-1]) if model is not None else None
            msg = (unknown_key_message(err["loc"][-1], valid) if valid is not None
                   else "unknown key (check the spelling)")
        lines.append(f"{source}: {loc}: {msg}")
    return first_problems(lines)


def _fields_at(model: type[BaseModel], loc: tuple) -> list[str] | None:
    """The field names of the model at ``loc`` inside ``model`` (list indexes skipped), or
    None when ``loc`` leads to something that is not a pydantic model."""
    for part in loc:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(str(part))
        if field is None:
            return None
        inner = _model_in(field.annotation)
        if inner is None:
            return None
        model = inner
    return list(model.model_fields)


def _model_in(tp: Any) -> type[BaseModel] | None:
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return tp
    for arg in typing.get_args(tp):
        found = _model_in(arg)
        if found is not None:
            return found
    return None


M = TypeVar("M", bound=BaseModel)


def validate_config(data: Any, model: type[M], *, source: str, shape: str,
                    error: type[ConfigInvalid] = ConfigInvalid) -> M:
    """``data`` (a loaded YAML document) validated by ``model``, the kind's pydantic model.

    Args:
        source: the file as messages name it (``"gate file g.yaml"``).
        shape: the keys a document of this kind starts with, for the message about an empty
            or non-mapping document (``"clean_accuracy_min: 0.8, ..."``).
        error: the class raised, :class:`ConfigInvalid` or a subclass a kind keeps for its
            callers (``robustness.suites.SuiteError``).

    Raises:
        ConfigInvalid: ``{source}: {field}: {message}``, one line per problem.

    >>> from pydantic import BaseModel, ConfigDict
    >>> class Gate(BaseModel):
    ...     model_config = ConfigDict(extra="forbid")
    ...     clean_accuracy_min: float | None = None
    >>> validate_config({"clean_acc": 0.8}, Gate, source="gate file g.yaml", shape="...")
    Traceback (most recent call last):
    ...
    ironsight.cluster.yamlfile.ConfigInvalid: gate file g.yaml: clean_acc: unknown key; did you mean 'clean_accuracy_min'? valid keys: clean_accuracy_min
    """
    if not isinstance(data, dict):
        got = "an empty document" if data is None else f"a YAML {type(data).__name__}"
        raise error(f"{source}: expected a YAML mapping ({shape}), got {got}")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise error("\n".join(problem_lines(exc, source, model))) from None


def load_config(uri_or_path: str, model: type[M], *, what: str, shape: str,
                error: type[ConfigInvalid] = ConfigInvalid) -> M:
    """Read the YAML file at ``uri_or_path`` (local path or ``s3://``, :func:`load_yaml`) and
    validate it with ``model`` (:func:`validate_config`): the one loader of every file kind
    (model card, job spec, gate, suite). Every problem is a :class:`ConfigInvalid` whose
    message starts with ``"{what} {uri_or_path}"`` and names the field.
    """
    data = load_yaml(uri_or_path, what=what)
    return validate_config(data, model, source=f"{what} {uri_or_path}", shape=shape, error=error)

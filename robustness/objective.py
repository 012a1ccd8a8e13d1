"""Which model to ship: an objective the user names, applied to the comparison's ranking rows.

Grammar (``ironsight compare --objective``)::

    (max | min) METRIC [s.t. CONSTRAINT [and CONSTRAINT ...]]
    CONSTRAINT := METRIC OP NUMBER [UNIT]        OP: <=  <  >=  >  ==

``subject to`` may stand for ``s.t.``; a comma for ``and``. Case does not matter.

| metric                | meaning (one ranking row per model)             | better | unit (optional) |
|-----------------------|-------------------------------------------------|--------|-----------------|
| ``accuracy``          | clean top-1 accuracy, a fraction in [0, 1]       | higher | ``%`` (90% = 0.9) |
| ``corruption_accuracy`` | mean accuracy over the suite's conditions      | higher | ``%``           |
| ``robust_accuracy``   | accuracy under the suite's attack at its eps     | higher | ``%``           |
| ``mix_accuracy``      | expected accuracy under the suite's ``mix``      | higher | ``%``           |
| ``f1``                | clean macro F1                                   | higher | ``%``           |
| ``p50_ms``, ``p95_ms`` | latency per image at batch 1 (alias ``p50``, ``p95``) | lower | ``ms``   |
| ``images_per_s``      | throughput at the best batch size                | higher | ``img/s``       |
| ``memory_mb``         | peak inference memory (alias ``memory``)         | lower  | ``MB``          |
| ``params_m``          | parameters, millions                             | lower  | ``M``           |
| ``gflops``            | forward GFLOPs per image                         | lower  | ``G``           |

Rules:

* A row is feasible when every constraint holds and its objective metric is known; a row whose
  constrained metric is None (a model without a mix, with ``--no-profile``) is infeasible.
* The winner is the best feasible row by the objective metric; ties (equal values) are broken
  by the next sensible metric (:data:`TIE_BREAKS`): the fastest (``p95_ms``) among equally
  accurate models, the most accurate among equally fast or small ones; then by name.
* A misspelled metric gets a did-you-mean; an objective metric that no row has is an error
  (:class:`~ironsight.cluster.errors.InvalidInput`, exit 2), as is malformed text.

>>> rows = [{"model": "big", "accuracy": 0.95, "p95_ms": 40.0},
...         {"model": "small", "accuracy": 0.91, "p95_ms": 12.0},
...         {"model": "tiny", "accuracy": 0.91, "p95_ms": 6.0}]
>>> parse_objective("max accuracy").choose(rows).winner
'big'
>>> r = parse_objective("max accuracy s.t. p95 <= 20 ms").choose(rows)
>>> r.winner, r.ranked
('tiny', ['tiny', 'small'])
>>> r.reason
'tiny has the highest accuracy (0.91) of the 2 of 3 models with p95_ms <= 20; tied on accuracy with small, it wins on p95_ms (6 vs 12).'
>>> parse_objective("max accuracy s.t. p95_ms < 5").choose(rows).reason
'No model meets p95_ms < 5; the closest is tiny (p95_ms 6).'
>>> parse_objective("max acuracy")
Traceback (most recent call last):
...
ironsight.cluster.errors.InvalidInput: objective 'max acuracy': metric 'acuracy' unknown; did you mean 'accuracy'? expected one of accuracy, corruption_accuracy, robust_accuracy, mix_accuracy, f1, p50_ms, p95_ms, images_per_s, memory_mb, params_m, gflops
"""

from __future__ import annotations

import math
import operator
import re
from dataclasses import dataclass, field

from ironsight.cluster.errors import InvalidInput, did_you_mean

HIGHER_IS_BETTER = {
    "accuracy": True, "corruption_accuracy": True, "robust_accuracy": True, "mix_accuracy": True,
    "f1": True, "p50_ms": False, "p95_ms": False, "images_per_s": True, "memory_mb": False,
    "params_m": False, "gflops": False,
}
METRICS = tuple(HIGHER_IS_BETTER)
ALIASES = {"p50": "p50_ms", "p95": "p95_ms", "memory": "memory_mb", "throughput": "images_per_s"}
_FRACTIONS = ("accuracy", "corruption_accuracy", "robust_accuracy", "mix_accuracy", "f1")
UNITS: dict[str, dict[str, float]] = {
    **{m: {"%": 0.01} for m in _FRACTIONS},
    "p50_ms": {"ms": 1.0, "s": 1000.0}, "p95_ms": {"ms": 1.0, "s": 1000.0},
    "images_per_s": {"img/s": 1.0, "images/s": 1.0},
    "memory_mb": {"mb": 1.0, "mib": 1.0, "gb": 1024.0, "gib": 1024.0},
    "params_m": {"m": 1.0}, "gflops": {"g": 1.0, "gflops": 1.0},
}
# The next sensible metric when the objective metric ties: accuracy-like objectives prefer the
# faster model, speed/size objectives the more accurate one.
TIE_BREAKS = {m: ("p95_ms", "params_m") for m in _FRACTIONS} | {
    m: ("accuracy", "p95_ms") for m in ("p50_ms", "p95_ms", "images_per_s", "memory_mb",
                                         "params_m", "gflops")}
OPS = {"<=": operator.le, "<": operator.lt, ">=": operator.ge, ">": operator.gt, "==": None}

_HEAD = re.compile(r"^\s*(max|min)(?:imi[sz]e)?\s+([A-Za-z_][\w]*)\s*(.*?)\s*$", re.IGNORECASE)
_ST = re.compile(r"^(?:s\.\s*t\.?|subject\s+to)\s+(.+)$", re.IGNORECASE | re.DOTALL)
_CONSTRAINT = re.compile(r"^([A-Za-z_]\w*)\s*(<=|>=|==|<|>)\s*"
                         r"([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*([A-Za-z%/]*)$")


@dataclass(frozen=True)
class Constraint:
    metric: str
    op: str
    value: float

    def holds(self, x: float | None) -> bool:
        if x is None:
            return False
        if self.op == "==":
            return math.isclose(x, self.value, rel_tol=1e-9, abs_tol=1e-12)
        return OPS[self.op](x, self.value)

    def __str__(self) -> str:
        return f"{self.metric} {self.op} {self.value:g}"


@dataclass(frozen=True)
class Recommendation:
    """The choice under an objective: ``winner`` is a row's ``model`` (None when no row is
    feasible), ``reason`` one plain sentence, ``feasible`` the rows meeting every constraint
    (input order), ``ranked`` those rows best first."""

    winner: str | None
    reason: str
    feasible: list[str]
    ranked: list[str]

    def to_dict(self) -> dict:
        return {"winner": self.winner, "reason": self.reason, "feasible": list(self.feasible),
                "ranked": list(self.ranked)}


def _fmt(x: float | None) -> str:
    return "—" if x is None else f"{x:.4g}"


@dataclass(frozen=True)
class Objective:
    """A parsed objective (see the module docstring); build it with :func:`parse_objective`."""

    text: str
    sense: str  # "max" | "min"
    metric: str
    constraints: tuple[Constraint, ...] = field(default_factory=tuple)

    def to_dict(self) -> dict:
        return {"text": self.text, "sense": self.sense, "metric": self.metric,
                "constraints": [str(c) for c in self.constraints]}

    def _key(self, row: dict) -> tuple:
        """Sort key, smaller is better: the objective, then the tie-breaks, then the name."""
        key: list = [-row[self.metric] if self.sense == "max" else row[self.metric]]
        for m in TIE_BREAKS[self.metric]:
            v = row.get(m)
            key += [v is None, 0.0 if v is None else (-v if HIGHER_IS_BETTER[m] else v)]
        return (*key, str(row.get("model")))

    def choose(self, rows: list[dict]) -> Recommendation:
        """Apply the objective to ranking rows (dicts with ``model`` and the metric keys).

        Raises:
            InvalidInput: no row has a value for the objective metric.
        """
        if not any(r.get(self.metric) is not None for r in rows):
            raise InvalidInput(f"objective {self.text!r}: no model has a value for {self.metric!r}"
                               f"{_why_missing(self.metric)}")
        feasible = [r for r in rows if r.get(self.metric) is not None
                    and all(c.holds(r.get(c.metric)) for c in self.constraints)]
        names = [str(r["model"]) for r in feasible]
        if not feasible:
            return Recommendation(None, self._none_reason(rows), [], [])
        ranked = sorted(feasible, key=self._key)
        best = ranked[0]
        word = "highest" if self.sense == "max" else "lowest"
        among = (f"of the {len(feasible)} of {len(rows)} models with "
                 f"{' and '.join(map(str, self.constraints))}" if self.constraints
                 else f"of the {len(rows)} models")
        reason = f"{best['model']} has the {word} {self.metric} ({_fmt(best[self.metric])}) {among}"
        tied = [r for r in ranked[1:] if r[self.metric] == best[self.metric]]
        if tied:
            reason += f"; tied on {self.metric} with {', '.join(str(r['model']) for r in tied)}, "
            reason += self._tie_words(best, tied[0])
        return Recommendation(str(best["model"]), reason + ".", names,
                              [str(r["model"]) for r in ranked])

    def _tie_words(self, best: dict, other: dict) -> str:
        for m in TIE_BREAKS[self.metric]:
            if best.get(m) != other.get(m):
                return f"it wins on {m} ({_fmt(best.get(m))} vs {_fmt(other.get(m))})"
        return "it wins on name order"

    def _none_reason(self, rows: list[dict]) -> str:
        """'No model meets ...; the closest is X (metric v).' for the first constraint that
        rules out every model, else for all of them together."""
        text = " and ".join(map(str, self.constraints))
        for c in self.constraints:
            known = [r for r in rows if r.get(c.metric) is not None]
            if known and not any(c.holds(r[c.metric]) for r in known):
                closest = min(known, key=lambda r: abs(r[c.metric] - c.value))
                return (f"No model meets {c}; the closest is {closest['model']} "
                        f"({c.metric} {_fmt(closest[c.metric])}).")
            if not known:
                return f"No model meets {c}: no model has a value for {c.metric}{_why_missing(c.metric)}."
        return f"No model meets {text} and has a value for {self.metric}."


def _why_missing(metric: str) -> str:
    if metric == "mix_accuracy":
        return " (the suite has no mix: use a suite with `mix:`, e.g. --suite field)"
    if metric in ("p50_ms", "p95_ms", "images_per_s", "memory_mb", "params_m", "gflops"):
        return " (it comes from profiling: drop --no-profile)"
    if metric == "robust_accuracy":
        return " (the suite has no attack)"
    return ""


def _metric(name: str, text: str) -> str:
    low = name.lower()
    low = ALIASES.get(low, low)
    if low not in HIGHER_IS_BETTER:
        raise InvalidInput(f"objective {text!r}: metric {name!r} unknown; "
                           f"{did_you_mean(low, [*METRICS, *ALIASES])}expected one of {', '.join(METRICS)}")
    return low


def parse_objective(text: str) -> Objective:
    """Parse ``max|min METRIC [s.t. METRIC OP NUMBER [and ...]]`` (see the module docstring).

    Raises:
        InvalidInput: malformed text, an unknown metric (with a did-you-mean), an unknown
            operator or a unit that does not fit the metric.

    >>> o = parse_objective("MAX mix_accuracy s.t. memory_mb <= 0.5 GB and p95 < 50ms")
    >>> o.metric, [str(c) for c in o.constraints]
    ('mix_accuracy', ['memory_mb <= 512', 'p95_ms < 50'])
    >>> [str(c) for c in parse_objective("min p95_ms subject to accuracy >= 90%").constraints]
    ['accuracy >= 0.9']
    """
    if not isinstance(text, str) or not text.strip():
        raise InvalidInput("objective is empty; expected e.g. \"max accuracy s.t. p95_ms <= 20\"")
    head = _HEAD.match(text)
    if head is None:
        raise InvalidInput(f"objective {text!r} must start with max or min and a metric, e.g. "
                           "\"max accuracy s.t. p95_ms <= 20\"")
    sense, metric = head.group(1).lower(), _metric(head.group(2), text)
    rest = head.group(3)
    constraints: list[Constraint] = []
    if rest:
        st = _ST.match(rest)
        if st is None:
            raise InvalidInput(f"objective {text!r}: expected \"s.t.\" before the constraints, "
                               f"got {rest!r}")
        for part in re.split(r"\s+and\s+|\s*,\s*", st.group(1).strip(), flags=re.IGNORECASE):
            m = _CONSTRAINT.match(part.strip())
            if m is None:
                raise InvalidInput(f"objective {text!r}: constraint {part!r} is not "
                                   "METRIC OP NUMBER (OP one of <=, <, >=, >, ==), e.g. p95_ms <= 20")
            name, op, number, unit = m.groups()
            cm = _metric(name, text)
            value = float(number)
            if unit:
                scale = UNITS[cm].get(unit.lower())
                if scale is None:
                    raise InvalidInput(f"objective {text!r}: unit {unit!r} does not fit {cm}; "
                                       f"expected {' or '.join(UNITS[cm]) or 'no unit'}")
                value *= scale
            constraints.append(Constraint(cm, op, value))
    return Objective(text.strip(), sense, metric, tuple(constraints))

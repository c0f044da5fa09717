"""An option field's rules, written once beside it: range, choices, ``start`` name and CLI flag.

Option dataclasses (:mod:`streaming.config`, :mod:`streaming.models.options`) declare a field
with :func:`opt`; its type and nullability come from the annotation and its help text from the
attribute docstring under it. The config file, ``--set``, the CLI flags, the ``start`` message
and ``/v1/info`` all read :func:`knobs`, so no rule is written twice. A plain ``dataclasses``
field is a knob too: type-checked, with no range, no flag and no ``start`` name.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import inspect
import math
import types
import typing
from dataclasses import dataclass
from typing import Any

from .protocol import shown

_KEY = "streaming.knobs"
"""The ``dataclasses.field`` metadata key under which :func:`opt` keeps a field's :class:`Rules`."""


class ConfigError(ValueError):
    """A config file, CLI value or start field that is unknown or out of range."""


@dataclass(frozen=True)
class Rules:
    """What :func:`opt` adds to a field beyond its type and default."""

    low: float | None = None
    high: float | None = None
    """Inclusive range of a number, or of a string's length; None = unbounded on that side."""
    choices: tuple[Any, ...] | None = None
    """The only values allowed (config, ``--set`` and the flag's argparse choices)."""
    start: str | None = None
    """The name under which a client's ``start`` may set it; None = only the operator may."""
    start_range: tuple[float, float] | None = None
    """A narrower range for clients than for the operator (e.g. 0 = "off" is the operator's alone)."""
    flag: str | None = None
    """Its dedicated CLI flag (``--window-s``); None = only ``--set SECTION.KEY=VALUE``."""
    metavar: str | None = None
    """The flag's value placeholder in ``--help``; None = from the type and unit."""
    group: str | None = None
    """The ``--help`` group of its flag; None = its config section."""


def opt(default: Any = dataclasses.MISSING, *, low: float | None = None, high: float | None = None,
        choices: tuple[Any, ...] | None = None, start: str | bool | None = None,
        start_range: tuple[float, float] | None = None, flag: str | None = None, metavar: str | None = None,
        group: str | None = None) -> Any:
    """A dataclass field with its rules in metadata (``start=True``: a start field of the same name).

    A list default is copied for every instance (``default_factory``).
    """
    if flag is not None and not flag.startswith("--"):
        raise ValueError(f"a flag starts with '--', got {flag!r}")
    if low is not None and high is not None and low > high:
        raise ValueError(f"empty range [{low}, {high}]")
    if start == "" or start is False:
        raise ValueError("start is a field name, True (the field's own name) or None")
    start_name = "" if start is True else start  # "": the field's own name, filled in by knobs()
    rules = Rules(low, high, tuple(choices) if choices is not None else None, start_name, start_range, flag,
                  metavar, group)
    metadata = {_KEY: rules}
    if isinstance(default, list):
        return dataclasses.field(default_factory=functools.partial(list, default), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


@dataclass(frozen=True)
class Knob:
    """One option field as every front end sees it: type, default, docs and rules."""

    name: str
    kind: type | None
    """``bool``, ``int``, ``float``, ``str``, ``list``… from the annotation; None = not checked."""
    item: type | None
    """The element type of a ``list[...]`` field."""
    nullable: bool
    """Whether None is a value (the annotation has ``| None``)."""
    default: Any
    doc: str
    """The attribute docstring (empty when the field has none)."""
    rules: Rules

    @property
    def start(self) -> str | None:
        """The ``start`` field name, if a client may set this option."""
        return self.rules.start

    @property
    def flag(self) -> str | None:
        return self.rules.flag

    def check(self, name: str, value: Any, *, for_start: bool = False) -> Any:
        """``value`` checked against type, nullability, range and choices, converted (600.0 → 600 for an int)."""
        low, high = (self.rules.start_range if for_start and self.rules.start_range else
                     (self.rules.low, self.rules.high))
        if self.kind is None:
            return value
        value = check_value(name, value, self.kind, self.nullable, low, high)
        if self.item is not None and value is not None:
            value = [check_value(f"{name}[{i}]", v, self.item) for i, v in enumerate(value)]
        if self.rules.choices is not None and value is not None and value not in self.rules.choices:
            allowed = ", ".join(shown(c) for c in self.rules.choices)
            raise ConfigError(f"{name} must be one of {allowed}, got {shown(value)}")
        return value


@functools.cache
def knobs(cls: type) -> dict[str, Knob]:
    """The knobs of an option dataclass, in field order (computed once per class)."""
    hints = typing.get_type_hints(cls)
    docs = attribute_docs(cls)
    out: dict[str, Knob] = {}
    for f in dataclasses.fields(cls):
        rules: Rules = f.metadata.get(_KEY, Rules())
        if rules.start == "":
            rules = dataclasses.replace(rules, start=f.name)
        kind, item, nullable = _annotation_kind(hints[f.name])
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        out[f.name] = Knob(f.name, kind, item, nullable, default, docs.get(f.name, ""), rules)
    return out


def _annotation_kind(hint: Any) -> tuple[type | None, type | None, bool]:
    """``int`` → (int, None, False); ``str | None`` → (str, None, True); ``list[str]`` → (list, str, False).

    An annotation of several types (``int | str``) is not checked: (None, None, nullable).
    """
    nullable = False
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = typing.get_args(hint)
        nullable = type(None) in args
        rest = [a for a in args if a is not type(None)]
        if len(rest) != 1:
            return None, None, nullable
        hint = rest[0]
    origin = typing.get_origin(hint) or hint
    if not isinstance(origin, type):
        return None, None, nullable
    args = typing.get_args(hint)
    item = args[0] if origin is list and len(args) == 1 and args[0] in _TYPE_NAMES else None
    return origin, item, nullable


@functools.cache
def attribute_docs(cls: type) -> dict[str, str]:
    """The docstring written under each annotated attribute of ``cls``, read once from its source."""
    try:
        tree = ast.parse(inspect.cleandoc(inspect.getsource(cls)))
    except (OSError, TypeError, SyntaxError):  # no source (a frozen build): the flags keep no help text
        return {}
    body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
    docs: dict[str, str] = {}
    for node, after in zip(body, body[1:]):
        if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
                and isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant)
                and isinstance(after.value.value, str)):
            docs[node.target.id] = inspect.cleandoc(after.value.value)
    return docs


_TYPE_NAMES = {bool: "a boolean", int: "an integer", float: "a number", str: "a string"}


def check_value(name: str, value: Any, kind: type, nullable: bool = False,
                low: float | None = None, high: float | None = None) -> Any:
    """Check one value against its type (JSON's: a bool is not a number), nullability and inclusive range.

    Returns the value converted to ``kind`` (600.0 → 600 for an int, 2 → 2.0 for a float); the range of a
    string bounds its length. Raises :class:`ConfigError` naming ``name``.
    """
    if value is None:
        if nullable:
            return None
        raise ConfigError(f"{name} must be {_TYPE_NAMES.get(kind, kind.__name__)}, not null")
    if kind in (int, float):
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{name} must be {_TYPE_NAMES[kind]}, got {shown(value)}")
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{name} must be a finite number, got {value!r}")
        if kind is int and isinstance(value, float) and not value.is_integer():
            raise ConfigError(f"{name} must be a whole number, got {value!r}")
        if (low is not None and value < low) or (high is not None and value > high):
            if low is not None and high is not None:
                raise ConfigError(f"{name}={shown(value)} is out of range [{low}, {high}]")
            raise ConfigError(f"{name}={shown(value)} must be {_range(low, high)}")
        try:
            return kind(value)
        except OverflowError:  # an integer too large for a float
            raise ConfigError(f"{name}={shown(value)} is too large") from None
    if not isinstance(value, kind):
        raise ConfigError(f"{name} must be {_TYPE_NAMES.get(kind, kind.__name__)}, got {shown(value)}")
    if kind is str and ((low is not None and len(value) < low) or (high is not None and len(value) > high)):
        raise ConfigError(f"{name} must be {_range(low, high, 'characters long')}, got {len(value)}")
    return value


def _range(low: float | None, high: float | None, unit: str = "") -> str:
    """``1-8 unit`` for a closed range, ``>= 0 unit`` / ``<= 8 unit`` for a half-open one."""
    text = f"{low}-{high}" if low is not None and high is not None else (
        f">= {low}" if low is not None else f"<= {high}")
    return f"{text} {unit}".strip()

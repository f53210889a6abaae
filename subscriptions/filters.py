"""Payload filters: which of its entitled events a subscriber wants, by their content.

A filter is a JSON object. Each key is a dotted path into the event's payload
(`pipelineId`, `contact.tags`; a part that is a whole number indexes an array) and its value
is the condition the value found there must meet: a literal (equality) or an object of
operators, all of which must hold. Several keys must all hold. `$and` (a list of filters,
all hold), `$or` (a list of filters, one holds) and `$not` (a filter, does not hold)
combine filters, nested up to `MAX_DEPTH` levels.

| operator | the value at the path |
| --- | --- |
| `$eq`, `$ne` | equals / does not equal the operand (a scalar or a list of scalars) |
| `$in`, `$nin` | equals one / none of the operand's members (a list of scalars) |
| `$exists` | is present (`true`; null counts) / absent (`false`) |
| `$gt`, `$gte`, `$lt`, `$lte` | compares with the operand (a number, or a string by code points) |
| `$contains` | is a list with a member equal to the operand, or a string containing it |

Equality is JSON's: numbers by value (1 equals 1.0), booleans are not numbers, strings
exactly, lists member by member. Comparisons never cross types: a string is neither greater
nor smaller than a number. A missing path never matches, except `{"$exists": false}`: `$ne`
and `$nin` say "present and different", so they do not match a missing path either. `$not`
is plain negation: `{"$not": {"stage": "won"}}` matches an event without `stage`.

A filter is compiled once (`compile_filter`) into a tree of predicates, checked against the
grammar and its bounds, every problem named by its path in the filter
(`contact.tags.$in: expected an array`). `FilterIndex` evaluates many subscribers' filters
against one payload, testing only those whose filter can match it.

Pure: no I/O; the routing rule (`subscriptions.routing`) applies it.
"""

from __future__ import annotations

import json
import math
import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Generic, TypeVar

MAX_DEPTH: Final = 3  # nesting of $and, $or and $not inside one another
MAX_KEYS: Final = 16  # keys of one filter object
MAX_BRANCHES: Final = 16  # filters in one $and or $or
MAX_LIST: Final = 256  # members of a list operand
MAX_TEXT: Final = 1024  # characters of a string operand
MAX_PATH: Final = 256  # characters of a path

COMBINATORS: Final = ("$and", "$or", "$not")
OPERATORS: Final = (
    "$eq",
    "$ne",
    "$in",
    "$nin",
    "$exists",
    "$gt",
    "$gte",
    "$lt",
    "$lte",
    "$contains",
)

# The same characters `router.core.text` refuses in operator text: a path is shown back in
# listings and explanations. A path starts with neither `$` (operators do) nor `.`.
_CONTROL = r"\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028-\u202e\u2066-\u2069"
PATH_PATTERN: Final = f"^[^$.{_CONTROL}][^.{_CONTROL}]*(?:\\.[^.{_CONTROL}]+)*$"
_PATH = re.compile(PATH_PATTERN)


class _Missing:
    """What a path that leads nowhere resolves to (JSON null is a value, None)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "nothing"


MISSING: Final = _Missing()


class FilterError(ValueError):
    """A filter that breaks the grammar; `problems` are (path in the filter, message)."""

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        self.problems = problems
        super().__init__("; ".join(f"{path}: {msg}" if path else msg for path, msg in problems))


# ---------------------------------------------------------------------------------- values
# By exact type: payloads come from a JSON parser, and a dispatch tests filters against every
# event, so the check must cost one dict lookup (an ABC isinstance costs several times that).
_KINDS: Final[dict[type, str]] = {
    str: "string",
    int: "number",
    float: "number",
    bool: "boolean",
    type(None): "null",
    list: "array",
    dict: "object",
}
_SCALARS: Final = frozenset({"string", "number", "boolean", "null"})


def _kind(value: Any) -> str:
    """The JSON type of a value (a bool is not a number)."""
    return _KINDS.get(type(value), "other")


def json_equal(a: Any, b: Any) -> bool:
    """Equality of two JSON values: same type, then same value (1 equals 1.0)."""
    kind = _kind(a)
    if kind != _kind(b):
        return False
    if kind == "array":
        return len(a) == len(b) and all(json_equal(x, y) for x, y in zip(a, b, strict=True))
    if kind == "object":
        return a.keys() == b.keys() and all(json_equal(a[k], b[k]) for k in a)
    return bool(a == b)


Key = tuple[str, Any]


def scalar_key(value: Any) -> Key | None:
    """A hashable stand-in for a scalar, equal exactly when the values are `json_equal`;
    None for a list, an object or a missing value."""
    kind = _KINDS.get(type(value))
    return (kind, value) if kind in _SCALARS else None


def resolve(payload: Any, path: tuple[str, ...]) -> Any:
    """The value at `path` in `payload`, or MISSING."""
    value = payload
    for part in path:
        if type(value) is dict:
            if part not in value:
                return MISSING
            value = value[part]
        elif type(value) is list and part.isascii() and part.isdigit():
            if int(part) >= len(value):
                return MISSING
            value = value[int(part)]
        else:
            return MISSING
    return value


def _shown(value: Any, limit: int = 80) -> str:
    if value is MISSING:
        return "nothing"
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    return text if len(text) <= limit else text[: limit - 1] + "…"


# ------------------------------------------------------------------------------ predicates
Test = Callable[[Any], bool]


def _equal_to(operand: Any) -> Test:
    """JSON equality with `operand`, specialised by its type (the commonest test of all)."""
    kind = _kind(operand)
    if kind == "string":
        return lambda value: type(value) is str and value == operand
    if kind == "number":
        return lambda value: (type(value) is int or type(value) is float) and value == operand
    if kind in ("boolean", "null"):
        return lambda value: value is operand
    return lambda value: json_equal(value, operand)


def _member_of(operand: list[Any]) -> Test:
    keys = frozenset(scalar_key(m) for m in operand)
    return lambda value: scalar_key(value) in keys


def _compares(op: str, operand: Any) -> Test:
    kind = _kind(operand)
    if op == "$gt":
        return lambda value: _kind(value) == kind and value > operand  # no cross-type order
    if op == "$gte":
        return lambda value: _kind(value) == kind and value >= operand
    if op == "$lt":
        return lambda value: _kind(value) == kind and value < operand
    return lambda value: _kind(value) == kind and value <= operand


def _contains(operand: Any) -> Test:
    equal = _equal_to(operand)

    def test(value: Any) -> bool:
        if type(value) is list:
            return any(equal(member) for member in value)
        return type(value) is str and type(operand) is str and operand in value

    return test


def _test(op: str, operand: Any) -> Test:
    """The test of one operator on the value found (MISSING included: the type checks of
    equality, membership, `$contains` and comparisons already refuse it)."""
    if op == "$eq":
        return _equal_to(operand)
    if op == "$ne":
        equal = _equal_to(operand)
        return lambda value: value is not MISSING and not equal(value)
    if op == "$in":
        return _member_of(operand)
    if op == "$nin":
        member = _member_of(operand)
        return lambda value: value is not MISSING and not member(value)
    if op == "$exists":
        return lambda value: (value is not MISSING) is operand
    if op == "$contains":
        return _contains(operand)
    return _compares(op, operand)


class Node(ABC):
    """One node of a compiled filter."""

    @abstractmethod
    def matches(self, payload: Any) -> bool: ...

    @abstractmethod
    def failure(self, payload: Any) -> str | None:
        """Why the node does not match `payload`, naming the predicate; None if it does."""

    @abstractmethod
    def describe(self) -> str: ...

    @abstractmethod
    def matcher(self) -> Test:
        """`matches` as nested closures: a dispatch tests filters against every event, and a
        closure call costs less than a method call and a generator per node."""


@dataclass(frozen=True, eq=False)
class Predicate(Node):
    """One operator applied to the value at one path."""

    path: tuple[str, ...]
    op: str
    operand: Any
    test: Test = field(repr=False)

    def matches(self, payload: Any) -> bool:
        return self.test(resolve(payload, self.path))

    def failure(self, payload: Any) -> str | None:
        value = resolve(payload, self.path)
        return None if self.test(value) else f"{self.describe()} got {_shown(value)}"

    def describe(self) -> str:
        return f"{'.'.join(self.path)} {self.op} {_shown(self.operand)}"

    def matcher(self) -> Test:
        test, path = self.test, self.path
        if len(path) == 1:
            (name,) = path
            return lambda payload: test(
                payload.get(name, MISSING) if type(payload) is dict else MISSING
            )
        return lambda payload: test(resolve(payload, path))


@dataclass(frozen=True, eq=False)
class AllOf(Node):
    nodes: tuple[Node, ...]

    def matches(self, payload: Any) -> bool:
        return all(node.matches(payload) for node in self.nodes)

    def failure(self, payload: Any) -> str | None:
        return next((f for node in self.nodes if (f := node.failure(payload)) is not None), None)

    def describe(self) -> str:
        return " and ".join(node.describe() for node in self.nodes) or "everything"

    def matcher(self) -> Test:
        parts = tuple(node.matcher() for node in self.nodes)
        if len(parts) == 2:
            first, second = parts
            return lambda payload: first(payload) and second(payload)
        return lambda payload: all(part(payload) for part in parts)


@dataclass(frozen=True, eq=False)
class AnyOf(Node):
    nodes: tuple[Node, ...]

    def matches(self, payload: Any) -> bool:
        return any(node.matches(payload) for node in self.nodes)

    def failure(self, payload: Any) -> str | None:
        failures = [node.failure(payload) for node in self.nodes]
        if any(f is None for f in failures):
            return None
        return f"$or none matched ({'; '.join(f for f in failures if f is not None)})"

    def describe(self) -> str:
        return "$or (" + "; ".join(node.describe() for node in self.nodes) + ")"

    def matcher(self) -> Test:
        branches = tuple(node.matcher() for node in self.nodes)
        return lambda payload: any(branch(payload) for branch in branches)


@dataclass(frozen=True, eq=False)
class Not(Node):
    node: Node

    def matches(self, payload: Any) -> bool:
        return not self.node.matches(payload)

    def failure(self, payload: Any) -> str | None:
        return f"$not matched ({self.node.describe()})" if self.node.matches(payload) else None

    def describe(self) -> str:
        return f"$not ({self.node.describe()})"

    def matcher(self) -> Test:
        inner = self.node.matcher()
        return lambda payload: not inner(payload)


Anchor = frozenset[tuple[tuple[str, ...], Key]]


@dataclass(frozen=True)
class PayloadFilter:
    """A compiled filter: `source` as given (what is stored and shown), `root` its tree.

    `anchor`, when the filter has one, is (path, value) pairs of which a payload must hold
    one for the filter to match (from equalities and `$in`s every match needs): `FilterIndex`
    tests the filter only against payloads holding one of them.
    """

    source: dict[str, Any]
    root: Node = field(compare=False, repr=False)
    anchor: Anchor | None = field(compare=False, repr=False)
    matches: Test = field(compare=False, repr=False)  # the tree as nested closures

    def failure(self, payload: Any) -> str | None:
        """The predicate that keeps `payload` out, with the value found; None if it matches."""
        return self.root.failure(payload)


# ------------------------------------------------------------------------------- compiling
class _Compiler:
    def __init__(self) -> None:
        self.problems: list[tuple[str, str]] = []

    def problem(self, where: Sequence[str], message: str) -> None:
        self.problems.append((".".join(where), message))

    def filter(self, doc: Any, where: list[str], depth: int) -> Node:
        if not isinstance(doc, Mapping):
            self.problem(where, "expected an object of paths and conditions")
            return AllOf(())
        if len(doc) > MAX_KEYS:
            self.problem(where, f"at most {MAX_KEYS} keys")
        nodes: list[Node] = []
        for key, value in doc.items():
            at = [*where, key]
            if key in COMBINATORS:
                if depth >= MAX_DEPTH:
                    self.problem(at, f"$and, $or and $not nest at most {MAX_DEPTH} deep")
                    continue
                nodes.append(self.combinator(key, value, at, depth + 1))
            elif key.startswith("$"):
                self.problem(at, "unknown operator; a filter's keys are paths, $and, $or, $not")
            elif len(key) > MAX_PATH or _PATH.fullmatch(key) is None:
                self.problem(at, _path_rule(key))
            else:
                nodes += self.condition(tuple(key.split(".")), value, at)
        return nodes[0] if len(nodes) == 1 else AllOf(tuple(nodes))

    def combinator(self, op: str, value: Any, at: list[str], depth: int) -> Node:
        if op == "$not":
            return Not(self.filter(value, at, depth))
        if not isinstance(value, list) or not 1 <= len(value) <= MAX_BRANCHES:
            self.problem(at, f"expected an array of 1 to {MAX_BRANCHES} filters")
            return AllOf(())
        nodes = tuple(self.filter(doc, [*at, str(i)], depth) for i, doc in enumerate(value))
        return AllOf(nodes) if op == "$and" else AnyOf(nodes)

    def condition(self, path: tuple[str, ...], value: Any, at: list[str]) -> list[Node]:
        if not isinstance(value, Mapping):
            return [_predicate(path, "$eq", value)] if self.literal(value, at) else []
        if not value:
            self.problem(at, "expected at least one operator")
        nodes = []
        for op, operand in value.items():
            if op not in OPERATORS:
                self.problem([*at, op], f"unknown operator; expected one of {', '.join(OPERATORS)}")
            elif self.operand(op, operand, [*at, op]):
                nodes.append(_predicate(path, op, operand))
        return nodes

    def operand(self, op: str, operand: Any, at: list[str]) -> bool:
        if op in ("$eq", "$ne"):
            return self.literal(operand, at)
        if op in ("$in", "$nin"):
            return self.scalar_list(operand, at)
        if op == "$exists":
            if isinstance(operand, bool):
                return True
            self.problem(at, "expected true or false")
            return False
        if op == "$contains":
            return self.scalar(operand, at)
        if _kind(operand) == "number" or isinstance(operand, str):
            return self.scalar(operand, at)
        self.problem(at, "expected a number or a string")
        return False

    def literal(self, value: Any, at: list[str]) -> bool:
        if isinstance(value, list):
            return self.scalar_list(value, at)
        return self.scalar(value, at)

    def scalar_list(self, value: Any, at: list[str]) -> bool:
        if not isinstance(value, list):
            self.problem(at, "expected an array")
            return False
        if len(value) > MAX_LIST:
            self.problem(at, f"at most {MAX_LIST} members")
            return False
        return all([self.scalar(member, [*at, str(i)]) for i, member in enumerate(value)])

    def scalar(self, value: Any, at: list[str]) -> bool:
        kind = _kind(value)
        if kind in ("array", "object", "other"):
            self.problem(at, "expected a string, a number, true, false or null")
            return False
        if kind == "number" and not math.isfinite(value):
            self.problem(at, "expected a finite number")
            return False
        if kind == "string" and len(value) > MAX_TEXT:
            self.problem(at, f"at most {MAX_TEXT} characters")
            return False
        return True


def _predicate(path: tuple[str, ...], op: str, operand: Any) -> Predicate:
    return Predicate(path, op, operand, _test(op, operand))


def _path_rule(key: str) -> str:
    if len(key) > MAX_PATH:
        return f"a path has at most {MAX_PATH} characters"
    return (
        "a path is dot-separated names, none empty, without control characters, not starting with $"
    )


def _weakness(anchor: Anchor) -> tuple[bool, int]:
    """How many payloads an anchor is likely to let through: one on true, false or null
    (which many events share) before any on strings and numbers, then fewer values first."""
    return any(kind in ("boolean", "null") for _, (kind, _) in anchor), len(anchor)


def _anchor(node: Node) -> Anchor | None:
    """(path, value) pairs of which every payload matching `node` holds at least one: an
    equality with a scalar or an `$in`; for `$and` one of its members' (the likeliest to be
    selective, `_weakness`), for `$or` all of its members' if each has some. None if there is
    no such set."""
    if isinstance(node, Predicate):
        if node.op == "$eq" and (key := scalar_key(node.operand)) is not None:
            return frozenset({(node.path, key)})
        if node.op == "$in":
            return frozenset((node.path, scalar_key(m)) for m in node.operand)
        return None
    if isinstance(node, AllOf):
        found = [a for a in map(_anchor, node.nodes) if a is not None]
        return min(found, key=_weakness) if found else None
    if isinstance(node, AnyOf):
        branches = [_anchor(child) for child in node.nodes]
        if any(a is None for a in branches):
            return None
        return frozenset().union(*(a for a in branches if a is not None))
    return None  # $not: what a negation matches cannot be listed


def compile_filter(document: Any) -> PayloadFilter:
    """Check `document` against the grammar and its bounds, and compile it.

    Raises FilterError naming every problem by its path in the filter.
    """
    compiler = _Compiler()
    root = compiler.filter(document, [], 0)
    if compiler.problems:
        raise FilterError(compiler.problems)
    return PayloadFilter(dict(document), root, _anchor(root), root.matcher())


# --------------------------------------------------------------------------- many filters
T = TypeVar("T")


class FilterIndex(Generic[T]):
    """Many filters against one payload: which items' filters match it, in the items' order.

    A filter with an anchor is filed under its (path, value) pairs, and tested only when the
    payload holds one of them; the others (whose every match needs no equality or `$in`) are
    tested every time. With 1,000 filters anchored on a few paths, a payload costs a lookup
    per path and a test of the few filters filed under its values.
    """

    def __init__(self, entries: Sequence[tuple[T, PayloadFilter]]) -> None:
        self._entries = list(entries)
        self._always: list[int] = []
        self._tables: dict[tuple[str, ...], dict[Key, list[int]]] = {}
        for position, (_, payload_filter) in enumerate(self._entries):
            anchor = payload_filter.anchor
            if anchor is None:
                self._always.append(position)
                continue
            for path, key in anchor:
                self._tables.setdefault(path, {}).setdefault(key, []).append(position)

    def __len__(self) -> int:
        return len(self._entries)

    def matching(self, payload: Any) -> list[T]:
        candidates = set(self._always)
        for path, table in self._tables.items():
            key = scalar_key(resolve(payload, path))
            if key is not None and key in table:
                candidates.update(table[key])
        entries = self._entries
        return [entries[i][0] for i in sorted(candidates) if entries[i][1].matches(payload)]


# ----------------------------------------------------------------------------- JSON schema
GRAMMAR: Final = (
    "Payload filter: keys are dotted paths into the event payload (`contact.tags`; a whole "
    "number indexes a list) and map to a literal (equality: a string, number, true, false, "
    "null or a list of these) or to an object of operators that must all hold: `$eq`, `$ne` "
    "(a literal), `$in`, `$nin` (a list), `$exists` (true or false), `$gt`, `$gte`, `$lt`, "
    "`$lte` (a number, or a string compared by code points), `$contains` (a list member or "
    "a substring). `$and`, `$or` (lists of filters) and `$not` (a filter) combine filters, "
    f"nested up to {MAX_DEPTH} deep. Every key must hold. Equality is JSON's (1 equals 1.0, "
    "booleans are not numbers); comparisons never cross types. A missing path matches only "
    '`{"$exists": false}`: `$ne` and `$nin` do not match it; `$not` is plain negation.'
)


def json_schemas(ref: Callable[[str], str]) -> dict[str, dict[str, Any]]:
    """The grammar as JSON schemas, by name; `ref(name)` is how one names another. The
    first, `PayloadFilter`, is a whole filter; the levels below it bound the nesting."""
    scalar = {
        "type": ["string", "number", "boolean", "null"],
        "maxLength": MAX_TEXT,
        "description": f"A scalar; a string has at most {MAX_TEXT} characters",
    }
    scalars = {"type": "array", "maxItems": MAX_LIST, "items": {"$ref": ref("FilterScalar")}}
    literal = {"anyOf": [{"$ref": ref("FilterScalar")}, {"$ref": ref("FilterList")}]}
    comparable = {"type": ["number", "string"], "maxLength": MAX_TEXT}
    operators: dict[str, Any] = {
        "type": "object",
        "minProperties": 1,
        "additionalProperties": False,
        "properties": {
            "$eq": literal,
            "$ne": literal,
            "$in": {"$ref": ref("FilterList")},
            "$nin": {"$ref": ref("FilterList")},
            "$exists": {"type": "boolean"},
            "$gt": comparable,
            "$gte": comparable,
            "$lt": comparable,
            "$lte": comparable,
            "$contains": {"$ref": ref("FilterScalar")},
        },
        "description": "Operators that must all hold for the value at the path",
    }
    schemas: dict[str, dict[str, Any]] = {
        "FilterScalar": scalar,
        "FilterList": scalars,
        "FilterOperators": operators,
        "FilterCondition": {
            "anyOf": [
                {"$ref": ref("FilterScalar")},
                {"$ref": ref("FilterList")},
                {"$ref": ref("FilterOperators")},
            ]
        },
    }
    for level in range(MAX_DEPTH + 1):
        name = "PayloadFilter" if level == 0 else f"PayloadFilterLevel{level}"
        below = {"$ref": ref(f"PayloadFilterLevel{level + 1}")}
        schema: dict[str, Any] = {
            "type": "object",
            "maxProperties": MAX_KEYS,
            "propertyNames": {"maxLength": MAX_PATH},
            "patternProperties": {PATH_PATTERN: {"$ref": ref("FilterCondition")}},
            "additionalProperties": False,
            "description": GRAMMAR if level == 0 else f"A filter nested {level} deep",
        }
        if level < MAX_DEPTH:
            branches = {"type": "array", "minItems": 1, "maxItems": MAX_BRANCHES, "items": below}
            schema["properties"] = {"$and": branches, "$or": branches, "$not": below}
        schemas[name] = schema
    return schemas

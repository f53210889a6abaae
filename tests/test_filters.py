"""Payload filters on their own (subscriptions/filters.py): every operator, their
combinations, missing paths and mismatched types, the grammar's refusals, the explanation of
a failed match, the index against plain evaluation, and the JSON schema against the compiler."""

from __future__ import annotations

from typing import Any

import jsonschema
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from subscriptions.filters import (
    MAX_BRANCHES,
    MAX_DEPTH,
    MAX_KEYS,
    MAX_LIST,
    FilterError,
    FilterIndex,
    compile_filter,
    json_equal,
    json_schemas,
)

PAYLOAD: dict[str, Any] = {
    "pipelineId": "p1",
    "monetaryValue": 250,
    "ratio": 0.5,
    "dnd": False,
    "assignedTo": None,
    "name": "Ada Lovelace",
    "contact": {"tags": ["vip", "newsletter"], "address": {"city": "London"}},
    "customFields": [{"id": "f1", "value": "x"}],
}


def matches(document: dict[str, Any], payload: Any = PAYLOAD) -> bool:
    compiled = compile_filter(document)
    outcome = compiled.matches(payload)
    # The explanation agrees with the verdict, whatever it is.
    assert (compiled.failure(payload) is None) is outcome
    return outcome


@pytest.mark.parametrize(
    ("document", "expected"),
    [
        ({"pipelineId": "p1"}, True),
        ({"pipelineId": "p2"}, False),
        ({"pipelineId": {"$eq": "p1"}}, True),
        ({"contact.address.city": "London"}, True),
        ({"contact.tags": ["vip", "newsletter"]}, True),
        ({"contact.tags": ["newsletter", "vip"]}, False),
        ({"contact.tags.0": "vip"}, True),
        ({"customFields.0.id": "f1"}, True),
        ({"assignedTo": None}, True),
        ({"monetaryValue": 250.0}, True),
        ({"pipelineId": {"$ne": "p2"}}, True),
        ({"pipelineId": {"$ne": "p1"}}, False),
        ({"pipelineId": {"$in": ["p0", "p1"]}}, True),
        ({"pipelineId": {"$in": []}}, False),
        ({"pipelineId": {"$nin": ["p0", "p2"]}}, True),
        ({"pipelineId": {"$nin": ["p1"]}}, False),
        ({"assignedTo": {"$exists": True}}, True),
        ({"stage": {"$exists": False}}, True),
        ({"pipelineId": {"$exists": False}}, False),
        ({"monetaryValue": {"$gt": 249}}, True),
        ({"monetaryValue": {"$gt": 250}}, False),
        ({"monetaryValue": {"$gte": 250}}, True),
        ({"monetaryValue": {"$lt": 250.5}}, True),
        ({"monetaryValue": {"$lte": 249.99}}, False),
        ({"monetaryValue": {"$gte": 100, "$lt": 300}}, True),
        ({"name": {"$gt": "Ad"}}, True),
        ({"name": {"$lt": "Ab"}}, False),
        ({"contact.tags": {"$contains": "vip"}}, True),
        ({"contact.tags": {"$contains": "vi"}}, False),
        ({"name": {"$contains": "Love"}}, True),
        ({"name": {"$contains": "love"}}, False),
        ({"pipelineId": "p1", "monetaryValue": {"$gt": 1000}}, False),
        ({}, True),
    ],
)
def test_each_operator(document: dict[str, Any], expected: bool) -> None:
    assert matches(document) is expected


@pytest.mark.parametrize(
    "document",
    [
        {"monetaryValue": "250"},  # a string is not a number
        {"monetaryValue": {"$gt": "1"}},
        {"name": {"$gt": 1}},
        {"dnd": 0},  # false is not 0
        {"dnd": {"$in": [0, None]}},
        {"monetaryValue": {"$in": [True]}},
        {"assignedTo": False},  # null is neither false
        {"assignedTo": {"$gte": 0}},
        {"contact.tags": "vip"},  # a list is not its member
        {"contact": {"$contains": "tags"}},  # an object contains nothing
        {"monetaryValue": {"$contains": 2}},
        {"name": {"$contains": 1}},
        {"contact.tags.5": "vip"},
        {"name.0": "A"},  # a string is not indexed
    ],
)
def test_no_match_across_types(document: dict[str, Any]) -> None:
    assert not matches(document)


@pytest.mark.parametrize(
    ("operator", "operand"),
    [
        ("$eq", "x"),
        ("$ne", "x"),
        ("$in", ["x"]),
        ("$nin", ["x"]),
        ("$exists", True),
        ("$gt", 0),
        ("$gte", 0),
        ("$lt", 0),
        ("$lte", 0),
        ("$contains", "x"),
    ],
)
def test_a_missing_path_never_matches(operator: str, operand: Any) -> None:
    assert not matches({"stage": {operator: operand}})
    assert not matches({"contact.missing.deeper": {operator: operand}})


def test_only_exists_false_matches_a_missing_path() -> None:
    assert matches({"stage": {"$exists": False}})
    assert matches({"contact.tags.9": {"$exists": False}})


def test_combinators_nest() -> None:
    assert matches({"$or": [{"pipelineId": "p2"}, {"monetaryValue": {"$gt": 100}}]})
    assert not matches({"$or": [{"pipelineId": "p2"}, {"stage": "won"}]})
    assert matches({"$and": [{"pipelineId": "p1"}, {"$not": {"dnd": True}}]})
    assert not matches({"$and": [{"pipelineId": "p1"}, {"$not": {"dnd": False}}]})
    nested = {
        "$or": [
            {"$and": [{"pipelineId": "p2"}, {"monetaryValue": 250}]},
            {"$and": [{"contact.tags": {"$contains": "vip"}}, {"$not": {"name": "Bob"}}]},
        ],
        "ratio": {"$lt": 1},
    }
    assert matches(nested)
    assert not matches(nested, {**PAYLOAD, "name": "Bob"})


def test_not_is_plain_negation_so_it_matches_a_missing_path() -> None:
    assert matches({"$not": {"stage": "won"}})
    assert not matches({"$not": {"stage": {"$exists": False}}})


def test_a_payload_that_is_not_an_object_has_no_paths() -> None:
    assert not matches({"pipelineId": "p1"}, ["pipelineId"])
    assert matches({"pipelineId": {"$exists": False}}, "p1")


@pytest.mark.parametrize(
    ("document", "payload", "failure"),
    [
        ({"pipelineId": "p1"}, {"pipelineId": "p2"}, 'pipelineId $eq "p1" got "p2"'),
        ({"pipelineId": {"$eq": "p1"}}, {}, 'pipelineId $eq "p1" got nothing'),
        (
            {"pipelineId": "p1", "contact.tags": {"$in": ["a", 1]}},
            {"pipelineId": "p1", "contact": {"tags": ["a"]}},
            'contact.tags $in ["a",1] got ["a"]',
        ),
        (
            {"$or": [{"a": 1}, {"b": {"$gt": 2}}]},
            {"a": 2},
            "$or none matched (a $eq 1 got 2; b $gt 2 got nothing)",
        ),
        ({"$not": {"a": True}}, {"a": True}, "$not matched (a $eq true)"),
        (
            {"a": {"$contains": "x"}},
            {"a": "y" * 200},
            'a $contains "x" got "' + "y" * 78 + "…",
        ),
    ],
)
def test_a_failure_names_the_predicate_and_the_value_found(
    document: dict[str, Any], payload: dict[str, Any], failure: str
) -> None:
    assert compile_filter(document).failure(payload) == failure


def problems(document: Any) -> list[tuple[str, str]]:
    with pytest.raises(FilterError) as refused:
        compile_filter(document)
    return refused.value.problems


def test_every_malformed_member_is_named_by_its_path() -> None:
    found = problems(
        {
            "contact.tags": {"$in": "vip"},
            "pipelineId": {"$regex": "p.*"},
            "monetaryValue": {"$gt": [1]},
            "dnd": {"$exists": "yes"},
            "stage": {},
            "a..b": 1,
            "$where": "1",
            "customFields": {"$eq": {"id": "f1"}},
            "$or": [],
            "$and": [{"x": {"$in": [[1]]}}],
            "$not": "x",
        }
    )
    assert [path for path, _ in found] == [
        "contact.tags.$in",
        "pipelineId.$regex",
        "monetaryValue.$gt",
        "dnd.$exists",
        "stage",
        "a..b",
        "$where",
        "customFields.$eq",
        "$or",
        "$and.0.x.$in.0",
        "$not",
    ]
    assert found[0] == ("contact.tags.$in", "expected an array")
    assert found[2] == ("monetaryValue.$gt", "expected a number or a string")
    assert found[3] == ("dnd.$exists", "expected true or false")


def test_the_filter_itself_must_be_an_object() -> None:
    assert problems(["pipelineId"]) == [("", "expected an object of paths and conditions")]


def test_bounds_are_refused() -> None:
    deep: dict[str, Any] = {"a": 1}
    for _ in range(MAX_DEPTH + 1):
        deep = {"$not": deep}
    assert [path for path, _ in problems(deep)] == [".".join(["$not"] * (MAX_DEPTH + 1))]
    assert problems({f"k{i}": i for i in range(MAX_KEYS + 1)})[0][0] == ""
    assert problems({"$or": [{"a": i} for i in range(MAX_BRANCHES + 1)]})[0][0] == "$or"
    assert problems({"a": {"$in": list(range(MAX_LIST + 1))}})[0][0] == "a.$in"
    assert problems({"a" * 300: 1})[0][1] == "a path has at most 256 characters"
    assert problems({"a": "x" * 1025})[0] == ("a", "at most 1024 characters")
    assert problems({"a\u202eb": 1})[0][0] == "a\u202eb"


def test_json_equality() -> None:
    assert json_equal(1, 1.0)
    assert not json_equal(1, True)
    assert not json_equal(0, False)
    assert not json_equal(None, False)
    assert json_equal([1, "a", None], [1.0, "a", None])
    assert json_equal({"a": [1]}, {"a": [1.0]})
    assert not json_equal({"a": 1}, {"a": 1, "b": 2})


# ------------------------------------------------------------------------- generated
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-3, 3),
    st.sampled_from([0.0, 1.5, -2.0]),
    st.sampled_from(["", "a", "b", "ab"]),
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from("xyz"), inner),
    max_leaves=6,
)
PAYLOADS = st.dictionaries(st.sampled_from(["x", "y", "z"]), VALUES, max_size=3)
PATHS = st.sampled_from(["x", "y", "z", "x.x", "x.0", "y.z"])
OPERAND = {
    "$eq": SCALARS | st.lists(SCALARS, max_size=2),
    "$ne": SCALARS,
    "$in": st.lists(SCALARS, max_size=3),
    "$nin": st.lists(SCALARS, max_size=3),
    "$exists": st.booleans(),
    "$gt": st.integers(-3, 3) | st.sampled_from(["a", "b"]),
    "$gte": st.integers(-3, 3),
    "$lt": st.sampled_from(["a", "b"]),
    "$lte": st.just(1.5),
    "$contains": SCALARS,
}
CONDITIONS = SCALARS | st.sampled_from(sorted(OPERAND)).flatmap(
    lambda op: OPERAND[op].map(lambda operand: {op: operand})
)
LEAVES = st.dictionaries(PATHS, CONDITIONS, min_size=1, max_size=2)
FILTERS = st.recursive(
    LEAVES,
    lambda inner: (
        st.lists(inner, min_size=1, max_size=3).map(lambda fs: {"$and": fs})
        | st.lists(inner, min_size=1, max_size=3).map(lambda fs: {"$or": fs})
        | inner.map(lambda f: {"$not": f})
    ),
    max_leaves=4,
).filter(lambda doc: _depth(doc) <= MAX_DEPTH)


def _depth(doc: Any) -> int:
    if not isinstance(doc, dict):
        return 0
    nested = [
        1 + max((_depth(f) for f in (v if isinstance(v, list) else [v])), default=0)
        for k, v in doc.items()
        if k in ("$and", "$or", "$not")
    ]
    return max(nested, default=0)


def _reference(doc: dict[str, Any], payload: dict[str, Any]) -> bool:
    """The semantics of the module docstring, written out plainly."""
    for key, condition in doc.items():
        if key == "$and" and not all(_reference(f, payload) for f in condition):
            return False
        if key == "$or" and not any(_reference(f, payload) for f in condition):
            return False
        if key == "$not" and _reference(condition, payload):
            return False
        if key.startswith("$"):
            continue
        found, value = _lookup(payload, key.split("."))
        ops = condition if isinstance(condition, dict) else {"$eq": condition}
        if not all(_holds(op, operand, found, value) for op, operand in ops.items()):
            return False
    return True


def _lookup(value: Any, parts: list[str]) -> tuple[bool, Any]:
    for part in parts:
        if isinstance(value, dict) and part in value:
            value = value[part]
        elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        else:
            return False, None
    return True, value


def _type(value: Any) -> type:
    return float if type(value) is int else type(value)


def _holds(op: str, operand: Any, found: bool, value: Any) -> bool:
    if op == "$exists":
        return found is operand
    if not found:
        return False
    if op == "$eq":
        return json_equal(value, operand)
    if op == "$ne":
        return not json_equal(value, operand)
    if op == "$in":
        return any(json_equal(value, m) for m in operand)
    if op == "$nin":
        return not any(json_equal(value, m) for m in operand)
    if op == "$contains":
        if isinstance(value, list):
            return any(json_equal(m, operand) for m in value)
        return isinstance(value, str) and isinstance(operand, str) and operand in value
    if _type(value) is not _type(operand) or isinstance(value, bool):
        return False
    return {
        "$gt": value > operand,
        "$gte": value >= operand,
        "$lt": value < operand,
        "$lte": value <= operand,
    }[op]


@settings(max_examples=300, deadline=None)
@given(FILTERS, PAYLOADS)
def test_compiled_filters_agree_with_the_plain_semantics(
    document: dict[str, Any], payload: dict[str, Any]
) -> None:
    assert matches(document, payload) is _reference(document, payload)


@settings(max_examples=100, deadline=None)
@given(st.lists(FILTERS, max_size=8), PAYLOADS)
def test_the_index_selects_exactly_the_matching_filters(
    documents: list[dict[str, Any]], payload: dict[str, Any]
) -> None:
    compiled = [compile_filter(d) for d in documents]
    index = FilterIndex(list(enumerate(compiled)))
    expected = [i for i, f in enumerate(compiled) if f.matches(payload)]
    assert index.matching(payload) == expected


def test_the_index_files_each_anchor_value() -> None:
    documents: list[dict[str, Any]] = [
        {"x": {"$in": ["a", "b"]}},  # 0: anchored on both members
        {"x": 1},  # 1: 1 and 1.0 are one value, true is another
        {"x": True},  # 2
        {"$or": [{"x": "b"}, {"y": 1}]},  # 3: anchored on both branches
        {"y": 2, "x": {"$nin": ["b"]}},  # 4: anchored on y
        {"$and": [{"x": "b"}], "y": {"$exists": True}},  # 5: anchored through $and
        {"$or": [{"x": "b"}, {"y": {"$gt": 5}}]},  # 6: a branch without: always tested
        {"$not": {"x": "b"}},  # 7: always tested
    ]
    index = FilterIndex(list(enumerate(compile_filter(d) for d in documents)))
    assert index.matching({"x": "b", "y": 0}) == [0, 3, 5, 6]
    assert index.matching({"x": 1.0}) == [1, 7]
    assert index.matching({"x": True, "y": 2}) == [2, 4, 7]
    assert index.matching({"x": ["b"], "y": 1}) == [3, 7]
    assert index.matching({"y": 6}) == [6, 7]


def test_the_index_tests_only_filters_anchored_on_the_payloads_value() -> None:
    calls: list[int] = []
    compiled = [compile_filter({"dnd": False, "assignedTo": f"u{i}"}) for i in range(1000)]
    index = FilterIndex(list(enumerate(compiled)))
    for i, f in enumerate(compiled):
        original = f.matches

        def counted(payload: Any, i: int = i, original: Any = original) -> bool:
            calls.append(i)
            return bool(original(payload))

        object.__setattr__(f, "matches", counted)
    assert index.matching({"assignedTo": "u7", "dnd": False}) == [7]
    assert calls == [7]


# The schema the OpenAPI document carries, resolved locally.
_SCHEMAS = json_schemas(lambda name: f"#/$defs/{name}")
_VALIDATOR = jsonschema.Draft202012Validator(
    {"$defs": _SCHEMAS, "$ref": "#/$defs/PayloadFilter"},
    format_checker=None,
)


@settings(max_examples=200, deadline=None)
@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(max_size=4),
        lambda inner: (
            st.lists(inner, max_size=3)
            | st.dictionaries(
                st.sampled_from(["a", "a.b", "$and", "$or", "$not", "$in", "$gt", "", "a.", "$x"]),
                inner,
                max_size=3,
            )
        ),
        max_leaves=8,
    )
    | FILTERS
)
def test_the_json_schema_accepts_exactly_what_compiles(document: Any) -> None:
    try:
        compile_filter(document)
        compiles = True
    except FilterError:
        compiles = False
    assert _VALIDATOR.is_valid(document) is compiles

"""Hostile documents (alias bombs, deep nesting, huge files, huge key counts) end in one clean ConfigProblem,
fast: each case asserts a wall-clock bound, far below what the unbounded loader took (an alias bomb of
a few hundred bytes ran past 60 s; 900 levels of nesting raised RecursionError)."""

import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kubetune.config import ConfigError, load_config
from kubetune.config.loading import (
    MAX_ALIASES,
    MAX_DEPTH,
    MAX_DOCUMENT_BYTES,
    MAX_NODES,
    bound_problems,
    parse_yaml,
)

# Generous for a loaded 2-core machine; the cases below take well under a second alone.
WALL_CLOCK_BOUND = 5.0


def billion_laughs(levels: int = 9, width: int = 9) -> str:
    lines = ['a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for level in range(1, levels):
        name, previous = chr(97 + level), chr(96 + level)
        lines.append(f"{name}: &{name} [{', '.join([f'*{previous}'] * width)}]")
    return "\n".join(lines) + "\n"


def timed(text: str):
    started = time.monotonic()
    document, problems = parse_yaml(text)
    elapsed = time.monotonic() - started
    assert elapsed < WALL_CLOCK_BOUND, f"took {elapsed:.1f}s"
    return document, problems


def test_an_alias_bomb_is_refused_by_its_expanded_size():
    text = billion_laughs()
    assert len(text) < 450
    document, problems = timed(text)
    assert document is None
    (problem,) = problems
    assert (
        f"more than {MAX_NODES} keys and values" in problem.message and "aliases expanded" in problem.message
    )


def test_an_alias_bomb_under_a_nested_key_through_merge_keys_is_refused():
    text = "base: &b0 {x: 1, y: 2}\n" + "".join(
        f"l{i}: &b{i} {{<<: [*b{i - 1}, *b{i - 1}, *b{i - 1}, *b{i - 1}]}}\n" for i in range(1, 12)
    )
    text = "deepspeed:\n" + "".join("  " + line + "\n" for line in text.splitlines())
    _, problems = timed(text)
    assert problems and problems[0].path.startswith("deepspeed")


def test_too_many_aliases_are_refused_whatever_they_expand_to():
    text = "a: &a 1\nb: [" + ", ".join(["*a"] * (MAX_ALIASES + 1)) + "]\n"
    _, problems = timed(text)
    assert problems[0].message.startswith(f"more than {MAX_ALIASES} YAML aliases")


def test_a_recursive_alias_is_refused():
    _, problems = timed("a: &a [*a, *a]\n")
    assert "refers to a node that contains it" in problems[0].message and problems[0].path == "a[0]"


@pytest.mark.parametrize("depth", [MAX_DEPTH + 1, 900, 100_000])
def test_deep_nesting_is_refused_with_the_key_path_never_a_recursion_error(depth):
    _, problems = timed("[" * depth + "]" * depth)
    assert problems[0].message == f"nested deeper than {MAX_DEPTH} levels"
    block = "".join(" " * i + f"k{i}:\n" for i in range(min(depth, 900))) + " " * 900 + "v: 1\n"
    _, problems = timed(block)
    assert problems[0].path.startswith("k0.k1.k2") and "deeper" in problems[0].message


def test_nesting_up_to_the_bound_loads():
    depth = MAX_DEPTH - 2
    document, problems = timed("[" * depth + "1" + "]" * depth)
    assert problems == [] and document is not None


def test_a_huge_file_is_refused_before_it_is_read(tmp_path):
    path = tmp_path / "big.yml"
    path.write_text("a: " + "x" * (MAX_DOCUMENT_BYTES + 1) + "\n")
    started = time.monotonic()
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert time.monotonic() - started < WALL_CLOCK_BOUND
    assert f"a config may have at most {MAX_DOCUMENT_BYTES}" in str(caught.value)


def test_a_huge_key_count_stops_at_the_node_bound():
    text = "".join(f"key_{i}: {i}\n" for i in range(50_000))
    assert len(text) < MAX_DOCUMENT_BYTES
    _, problems = timed(text)
    assert problems[0].message == f"more than {MAX_NODES} keys and values"


def test_python_mappings_are_bounded_too():
    deep: dict = {}
    node = deep
    for _ in range(900):
        node["k"] = {}
        node = node["k"]
    started = time.monotonic()
    assert "deeper than" in bound_problems(deep)[0].message
    shared = ["lol"] * 10
    for _ in range(8):
        shared = [shared] * 10  # a DAG, as PyYAML builds for aliases: 10^9 nodes expanded
    assert "more than" in bound_problems({"a": shared})[0].message
    looped: dict = {}
    looped["self"] = looped
    assert "contains it" in bound_problems(looped)[0].message
    assert time.monotonic() - started < WALL_CLOCK_BOUND
    with pytest.raises(ConfigError):
        load_config(deep)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(depth=st.integers(1, 3000), width=st.integers(1, 12), levels=st.integers(1, 12))
def test_fuzzed_nesting_and_aliases_always_end_in_a_report(depth, width, levels):
    for text in ("{a: " * depth + "1" + "}" * depth, billion_laughs(levels, width)):
        document, problems = timed(text)
        assert (document is None) == bool(problems)
        assert all(p.message and p.fix for p in problems)

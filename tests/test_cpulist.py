"""Kernel cpulist and cpumask text: parsing, formatting and their round trips (pure, no files)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tuner.machine.cpulist import format_cpulist, parse_cpulist, parse_cpumask

CPU_SETS = st.frozensets(st.integers(0, 4095), max_size=200)
PROPERTY = settings(max_examples=300, deadline=None)


def _kernel_mask(cpus: frozenset[int], words: int | None = None) -> str:
    """``cpus`` as the kernel writes a cpumask: 32-bit hex words, most significant first, comma-separated."""
    value = sum(1 << cpu for cpu in cpus)
    words = words or max(1, (max(cpus, default=0) // 32) + 1)
    return ",".join(f"{(value >> (32 * w)) & 0xFFFFFFFF:08x}" for w in reversed(range(words)))


@pytest.mark.parametrize(
    "text, cpus",
    [("0-3,8,10-11", {0, 1, 2, 3, 8, 10, 11}), ("", set()), ("5\n\x00\x00", {5}), ("0-1\n", {0, 1}),
     ("0-3,", {0, 1, 2, 3}), (" 2 , 4-5 ", {2, 4, 5}), ("0-15:2/4", set(range(16))), ("\x00", set())],
)
def test_parse_cpulist(text, cpus):
    assert parse_cpulist(text) == cpus


@pytest.mark.parametrize("text", ["x", "1-", "-3", "0x10", "1.5"])
def test_parse_cpulist_refuses_what_is_not_a_cpulist(text):
    with pytest.raises(ValueError):
        parse_cpulist(text)


def test_parse_cpumask_reads_words_most_significant_first():
    assert parse_cpumask("00000001,00000003\n") == {0, 1, 32}
    assert parse_cpumask("00000000,00000000") == set()
    assert parse_cpumask("ff\x00\n") == set(range(8))
    assert parse_cpumask("") == set()
    with pytest.raises(ValueError):
        parse_cpumask("zz")


def test_format_cpulist_is_the_inverse_of_parse():
    for cpus in [{0}, {0, 1, 2, 5}, {3, 5, 7}, set(range(64))]:
        assert parse_cpulist(format_cpulist(cpus)) == cpus


def test_format_cpulist_is_compact_sorted_and_ignores_repeats():
    assert format_cpulist([5, 0, 1, 2, 2, 9, 10]) == "0-2,5,9-10"
    assert format_cpulist([]) == ""
    assert format_cpulist(range(3, 4)) == "3"


@PROPERTY
@given(CPU_SETS)
def test_every_cpu_set_survives_format_then_parse(cpus):
    assert parse_cpulist(format_cpulist(cpus)) == cpus


@PROPERTY
@given(CPU_SETS)
def test_formatted_lists_are_canonical_ascending_disjoint_non_adjacent_ranges(cpus):
    text = format_cpulist(cpus)
    assert format_cpulist(parse_cpulist(text)) == text
    ranges = [[int(x) for x in part.split("-")] for part in text.split(",")] if text else []
    assert all(len(r) == 1 or r[0] < r[1] for r in ranges)  # "3", never "3-3"
    for before, after in zip(ranges, ranges[1:], strict=False):
        assert before[-1] < after[0] - 1  # a gap between ranges, else they would have been one range


@PROPERTY
@given(CPU_SETS, st.integers(0, 3))
def test_a_kernel_mask_of_any_width_parses_to_its_cpus(cpus, extra_words):
    words = max(1, (max(cpus, default=0) // 32) + 1) + extra_words  # leading zero words change nothing
    assert parse_cpumask(_kernel_mask(cpus, words) + "\n") == cpus


@PROPERTY
@given(CPU_SETS, st.sampled_from(["", "\n", "\x00", "\n\x00\x00", ","]))
def test_stray_nuls_newlines_and_trailing_commas_are_ignored(cpus, junk):
    assert parse_cpulist(format_cpulist(cpus) + junk) == cpus

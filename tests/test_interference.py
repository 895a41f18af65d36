"""Interference figures from captured /proc and /sys text (pure parsing, no live reads)."""

from __future__ import annotations

import math

from tuner.bench import interference as itf

STAT_BEFORE = """cpu  158467 0 31252 194801 1763 0 566 371 0 0
cpu0 70386 0 12752 109423 741 0 26 195 0 0
cpu1 88080 0 18499 85378 1021 0 539 175 0 0
intr 123 0 0
ctxt 456
"""
# 1 s later at 100 ticks/s: cpu0 ran 100 ticks (90 busy, 10 stolen); cpu1 was idle
STAT_AFTER = """cpu  158557 0 31252 194801 1763 0 566 381 0 0
cpu0 70466 0 12762 109423 741 0 26 205 0 0
cpu1 88080 0 18499 85478 1021 0 539 175 0 0
"""
STATUS = """Name:\tpython3
State:\tS (sleeping)
voluntary_ctxt_switches:\t150
nonvoluntary_ctxt_switches:\t17
"""
SCHED = """python3 (1234, #threads: 5)
-------------------------------------------------------------------
se.exec_start                                :      11553094.436291
se.nr_migrations                             :                   42
nr_switches                                  :                  167
"""
NUMASTAT = """numa_hit 11066164
numa_miss 0
local_node 11066100
other_node 64
"""


def test_proc_stat_gives_busy_steal_and_total_per_cpu():
    cpus = itf.parse_proc_stat(STAT_BEFORE)
    assert set(cpus) == {0, 1}
    assert cpus[0] == itf.CpuTimes(busy=70386 + 12752 + 26, steal=195, total=70386 + 12752 + 109423 + 741 + 26 + 195)


def test_thread_counters_parse_and_absent_ones_are_none():
    assert itf.parse_status_switches(STATUS) == 17
    assert itf.parse_sched_migrations(SCHED) == 42
    assert itf.parse_sched_migrations("nr_switches : 3\n") is None
    assert itf.parse_numastat(NUMASTAT) == (11066100, 64)


def snap(stat: str, switches: int, migrations: int | None) -> itf.Snapshot:
    return itf.Snapshot(itf.parse_proc_stat(stat), switches, migrations, (100, 0))


def test_window_figures_separate_steal_foreign_load_and_our_own_work():
    before, after = snap(STAT_BEFORE, 10, 5), snap(STAT_AFTER, 25, 9)
    # our workers used 0.5 s of CPU on cpu0 in the 1 s window: the other 0.4 s busy is foreign
    fig = itf.window_interference(before, after, [0], wall_s=1.0, workers_cpu_s=0.5, clock_ticks=100)
    assert math.isclose(fig["steal_pct"], 10.0)
    assert math.isclose(fig["foreign_cpu"], 0.4)
    assert fig["involuntary_ctx_switches"] == 15 and fig["migrations"] == 4
    assert fig["disturbed"]  # 10% steal and 0.4 cores of foreign load are both over the thresholds
    quiet = itf.window_interference(before, after, [1], wall_s=1.0, workers_cpu_s=0.0, clock_ticks=100)
    assert quiet["steal_pct"] == 0.0 and quiet["foreign_cpu"] == 0.0 and not quiet["disturbed"]


def test_our_own_work_is_never_foreign_and_unknown_figures_never_disturb():
    fig = itf.window_interference(snap(STAT_BEFORE, 0, None), snap(STAT_AFTER, 0, None), [0], 1.0, 0.9, 100)
    assert fig["foreign_cpu"] == 0.0 and fig["migrations"] is None
    assert not itf.is_disturbed({"steal_pct": math.nan, "foreign_cpu": math.nan})


def test_result_summary_counts_disturbed_windows():
    windows = [{"interference": {"disturbed": True}}, {"interference": {"disturbed": False}}, {}]
    best = {"interference": {"steal_pct": 1.0, "foreign_cpu": 0.1, "involuntary_ctx_switches": 3,
                             "migrations": 2}, "service_cv": 0.2}
    summary = itf.summarise(windows, best)
    assert summary == {"steal_pct": 1.0, "foreign_cpu": 0.1, "involuntary_ctx_switches": 3, "migrations": 2,
                       "service_cv": 0.2, "disturbed_windows": 1}
    assert "1 disturbed windows" in itf.describe(summary)


def test_a_live_snapshot_of_this_process_reads_counters():
    import os

    s = itf.snapshot([os.getpid()])
    assert s.cpu and s.switches >= 0

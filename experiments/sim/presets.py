"""The noise presets (``--noise``) and the figures the ``vm`` preset was calibrated to.

Measured on the lent 16-core VM (2026-11-23, README of the device notes): SqueezeNet at
P99 <= 50 ms, 16 workers x 1 core pinned, five runs of the same config: 664, 991, 1320, 1380 and
1955 req/s; one SqueezeNet worker alone on one core: service P50 5.9 ms, P99 25 ms; closed loop
16x1 1908 req/s vs ORT default 673 req/s. The fit and its residuals: experiments/sim/calibration.py.
"""

from __future__ import annotations

from experiments.sim.model import Noise

MEASURED_16X1 = (664.0, 991.0, 1320.0, 1380.0, 1955.0)  # req/s at P99 <= 50 ms, same config, five runs
MEASURED_SERVICE_MS = (5.9, 25.0)  # one worker on one core: service P50, P99
MEASURED_CLOSED_LOOP = {"w16xc1-intra1": 1908.0, "w1-unpinned-introdefault": 673.0}

QUIET = Noise("quiet", hiccup_rate=0.5, hiccup_ms=2.0)
VM = Noise("vm", hiccup_rate=3.5, hiccup_ms=20.0, neighbour_rate=0.1, neighbour_s=20.0, neighbour_cores=1.0,
           neighbour_share=0.65, steal_rate=0.01, steal_s=3.0, steal_fraction=0.25)
HEAVY = Noise("heavy", hiccup_rate=3.5, hiccup_ms=20.0, neighbour_rate=0.2, neighbour_s=20.0, neighbour_cores=1.0,
              neighbour_share=0.75, steal_rate=0.03, steal_s=3.0, steal_fraction=0.4)
# the ``vm`` machine without its neighbour and steal episodes (hiccups kept): what the simulator's truth is
# computed on; a diagnostic that tells the estimator's own bias from the interference's
VM_UNDISTURBED = VM.without_episodes()
PRESETS = {n.name: n for n in (QUIET, VM, HEAVY, VM_UNDISTURBED)}

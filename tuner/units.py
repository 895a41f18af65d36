"""Units on the command line and in files: durations, latency bounds, sizes."""

from __future__ import annotations

import math
import re

from tuner.errors import UsageError

MIN_P99_BOUND_S = 10e-6  # a request's round trip through a worker's pipe alone takes longer than this

_NUMBER = r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?"


def parse_duration(text: str, what: str = "duration") -> float:
    """``"20ms"``, ``"0.02s"``, ``"20000us"``, ``"2m"``, ``"1e3ms"`` -> seconds. A bare number is refused:
    the unit must be explicit."""
    match = re.fullmatch(rf"({_NUMBER})(us|ms|s|m|h)", text.strip()) if text else None
    if not match or text != text.strip():
        raise UsageError(
            f"{what} {text!r} is not a duration with a unit; write e.g. 20ms, 0.02s, 20000us"
        )
    value = float(match.group(1)) * {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}[match.group(2)]
    if value <= 0:
        raise UsageError(f"{what} {text!r} must be positive (greater than zero); write e.g. 20ms, 0.02s, 20000us")
    if value > 86400:
        raise UsageError(f"{what} {text!r} is longer than a day; check the unit (e.g. 20ms, 0.02s, 20000us)")
    return value


def parse_bound(text: str, what: str = "--p99") -> float:
    """A P99 bound to measure against: a duration no shorter than the harness can measure."""
    value = parse_duration(text, what)
    if value < MIN_P99_BOUND_S * (1 - 1e-9):  # 10us parses to 9.999...e-06
        raise UsageError(f"{what} {text!r} is below {MIN_P99_BOUND_S * 1e6:g} us, less than the harness itself "
                         "adds to a request (the pipe round trip to a worker): no config could meet it; "
                         "give a bound of at least 0.01ms, e.g. 20ms")
    return value


def parse_size(text: str, what: str = "size") -> int:
    """``"512M"``, ``"2G"``, ``"2GiB"``, ``"1500MB"`` -> bytes (binary units)."""
    match = re.fullmatch(r"(\d+(?:\.\d*)?)\s*([KMGT])(i?B)?", text.strip(), re.IGNORECASE) if text else None
    if not match:
        raise UsageError(f"{what} {text!r} is not a size; write e.g. 512M, 2G, 2GiB")
    value = int(float(match.group(1)) * 1024 ** ("KMGT".index(match.group(2).upper()) + 1))
    if value < 64 * 2**20:
        raise UsageError(f"{what} {text!r} is below 64 MiB: no ONNX Runtime worker starts in that")
    return value



def format_rate(rate: float, interval: tuple[float, float], estimator: str) -> str:
    """A throughput as tables show it: '412.0 [380-440]' for an estimate with its interval
    ('412.0 [380-?]' when the interval is open above), '>= 412.0' for a proven lower bound (a
    result of the bound rule, or one stored before estimates)."""
    lo, hi = interval
    if estimator != "estimate":
        return f">= {rate:.1f}" if rate > 0 else f"{rate:.1f}"
    if not math.isfinite(lo):
        return f"{rate:.1f}"
    return f"{rate:.1f} [{lo:.0f}-{hi:.0f}]" if math.isfinite(hi) else f"{rate:.1f} [{lo:.0f}-?]"


def format_ratio(ratio: float, low: float, high: float) -> str:
    """'2.31x (1.90-2.80)'; '2.31x (CI unknown)' without a bounded interval."""
    if not math.isfinite(ratio):
        return "-"
    if low > 0 and math.isfinite(high):
        return f"{ratio:.2f}x ({low:.2f}-{high:.2f})"
    return f"{ratio:.2f}x (CI unknown)"

"""The words and defaults of a P99 verdict, below every package that reads or writes them: the
statistics that decide a verdict (``tuner.bench.stats``) and the records that store one
(``tuner.results.records``) both import them from here, so records need nothing from ``bench``."""

PASS, FAIL, UNDECIDED = "pass", "fail", "undecided"
VERDICTS = (PASS, FAIL, UNDECIDED)
DEFAULT_CONFIDENCE = 0.95  # of each window's P99 verdict
DEFAULT_QUANTILE = 0.99  # the latency quantile judged (P99)

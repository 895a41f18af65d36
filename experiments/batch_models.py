"""Which shipped ``onnx:`` models can batch: ``python -m experiments.batch_models [--json]``.

For each model, ``tuner.bench.batchable.check_batching`` (dynamic batch dimension, or made symbolic
and verified by ONNX Runtime on 2 different stacked requests, or refused with the reason)."""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from tuner.bench.batchable import check_batching
from tuner.bench.model import BUNDLED, inspect_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object per model")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as cache:  # a fresh rewrite each time, not a cached answer
        for name in sorted(BUNDLED):
            began = time.monotonic()
            info = inspect_model(f"onnx:{name}")
            check = check_batching(info, Path(cache))
            row = {"model": f"onnx:{name}", "batchable": check.batchable, "how": check.how,
                   "check_s": round(time.monotonic() - began, 1)}
            print(json.dumps(row) if args.json else f"{row['model']:22} {'yes' if check.batchable else 'no':4} "
                  f"{check.how}", flush=True)


if __name__ == "__main__":
    main()

"""Service time of one SqueezeNet worker back to back vs with idle gaps, alternating 2-s blocks."""
import os
import sys
import time

import numpy as np
import onnxruntime as ort

from experiments.reference_harness import resolve_model

intra = int(sys.argv[1]); spin = sys.argv[2] == "1"
so = ort.SessionOptions()
so.intra_op_num_threads = intra
if not spin:
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
s = ort.InferenceSession(str(resolve_model("onnx:squeezenet")), so, providers=["CPUExecutionProvider"])
inp = s.get_inputs()[0]
x = np.random.rand(*[d if isinstance(d, int) else 1 for d in inp.shape]).astype(np.float32)
for _ in range(50): s.run(None, {inp.name: x})
res = {g: [] for g in (0.0, 0.002, 0.004, 0.008)}
rng = np.random.default_rng(0)
for block in range(int(sys.argv[3])):
    for g in res:
        end = time.perf_counter() + float(os.environ.get("BL", "1.0"))
        while time.perf_counter() < end:
            if g:
                time.sleep(rng.exponential(g))
            t = time.perf_counter(); s.run(None, {inp.name: x}); res[g].append(time.perf_counter() - t)
for g, v in res.items():
    v = np.array(v) * 1000
    print(f"intra {intra} spin {spin} gap {g*1000:.0f} ms: n {v.size} mean {v.mean():.2f} p50 {np.median(v):.2f} p90 {np.quantile(v,.9):.2f} p99 {np.quantile(v,.99):.2f}")

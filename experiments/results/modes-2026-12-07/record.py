"""Record every request's service time of a sustained closed loop (SqueezeNet, ORT default threads)."""
import sys
import time

import numpy as np
import onnxruntime as ort

from experiments.reference_harness import resolve_model


def main():
    s = ort.InferenceSession(str(resolve_model("onnx:squeezenet")), providers=["CPUExecutionProvider"])
    inp = s.get_inputs()[0]
    x = np.random.rand(*[d if isinstance(d, int) else 1 for d in inp.shape]).astype(np.float32)
    for _ in range(20): s.run(None, {inp.name: x})
    secs = float(sys.argv[1]); out = []
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < secs:
        t = time.perf_counter(); s.run(None, {inp.name: x}); out.append((t - t0, time.perf_counter() - t))
    np.save(sys.argv[2], np.array(out))
if __name__ == "__main__":
    main()

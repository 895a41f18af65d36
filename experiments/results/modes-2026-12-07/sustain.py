"""Service time per second of a sustained closed loop after idle (SqueezeNet, ORT default threads)."""
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
    idle, load, reps = float(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3])
    for r in range(reps):
        time.sleep(idle)
        t0 = time.perf_counter(); per = []
        sec = []
        while time.perf_counter() - t0 < load:
            t = time.perf_counter(); s.run(None, {inp.name: x}); d = time.perf_counter() - t
            sec.append(d)
            if time.perf_counter() - t0 >= len(per) + 1:
                per.append(1000 * np.mean(sec)); sec = []
        print(f"after {idle:.0f} s idle:", " ".join(f"{p:.1f}" for p in per), flush=True)
if __name__ == "__main__":
    main()

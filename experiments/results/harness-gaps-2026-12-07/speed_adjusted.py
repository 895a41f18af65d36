"""Speed-adjusted comparison: each tool's figure times the mean service time of its own minutes."""
import glob
import json
import os
import sys

import numpy as np


def pt_speed(path):
    d = json.load(open(path)); d = d.get("json", d)
    if not d or "windows" not in d: return None, None
    ws = [w for w in d["windows"] if w["scenario"] == "offline" and w["requests"] > 0]
    n = np.array([w["requests"] for w in ws]); s = np.array([w["mean_service_ms"] for w in ws])
    return d["throughput"], float((n * s).sum() / n.sum())

def h_speed(path):
    d = json.load(open(path))
    rs = [r for r in d["rates"] if r.get("mean_service_ms")]
    n = np.array([r["completed"] for r in rs]); s = np.array([r["mean_service_ms"] for r in rs])
    est = d["estimate"]["rate"] if isinstance(d.get("estimate"), dict) else None
    return est, float((n * s).sum() / n.sum()), d["capacity_probe"]["mean_service_ms"]

for folder in sys.argv[1:]:
    for h in sorted(glob.glob(os.path.join(folder, "harness-*.json"))):
        tag = os.path.basename(h)[len("harness-"):-5]
        est, hs, probe = h_speed(h)
        for suffix in ("", "-also"):
            p = os.path.join(folder, f"placetune-{tag}{suffix}.json")
            if not os.path.exists(p) or est is None: continue
            fig, ps = pt_speed(p)
            if fig is None: continue
            print(f"{os.path.basename(folder):45s} {tag:24s}{suffix:5s} harness {est:6.1f} @ {hs:5.2f} ms (probe {probe:5.2f}) | placetune {fig:6.1f} @ {ps:5.2f} ms | ratio {fig/est:5.2f} speed-adjusted {fig*ps/(est*hs):5.2f}")

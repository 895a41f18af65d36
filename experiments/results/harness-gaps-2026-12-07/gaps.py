"""The reference harness's own per-request overhead: at a fixed rate, every request's scheduled
time, start and end on its worker (the result queue's messages, captured); where a worker had
the next request waiting when it finished one (backlog), the gap from that end to the next
start is time the worker served nothing; and the harness's own service times replayed through
Lindley's recursion on its own arrival times give the P99 the queue would have without it.

    PYTHONPATH=. python experiments/results/harness-gaps-2026-12-07/gaps.py ort_default 110,120 20
"""
import sys

import numpy as np

from experiments import reference_harness as rh


def main() -> None:
    config, rates, run_s = sys.argv[1], [float(r) for r in sys.argv[2].split(",")], float(sys.argv[3])
    with rh.WorkerPool(rh.resolve_model("onnx:squeezenet"), rh.standard_configs()[config]) as pool:
        rng = np.random.default_rng(1)
        rh.run_rate(pool, 50.0, run_s=2, warmup_s=0.5, drain_s=1, bound_s=0.1, rng=rng)
        for rate in rates:
            seen: list = []
            original = pool._get

            def spy(timeout, original=original, seen=seen):
                msg = original(timeout)
                if msg is not None and msg[0] == "done":
                    seen.append(msg)
                return msg

            pool._get = spy
            captured = {}
            real_summarize = rh.summarize_run

            def grab(rate_, scheduled, sent, done, service, measured, deadline, bound_s, run_s_, captured=captured):
                captured.update(scheduled=scheduled.copy(), sent=sent.copy(), measured=measured.copy())
                return real_summarize(rate_, scheduled, sent, done, service, measured, deadline, bound_s, run_s_)

            rh.summarize_run = grab
            try:
                rec, _ = rh.run_rate(pool, rate, run_s=run_s, warmup_s=2, drain_s=1, bound_s=0.1, rng=rng)
            finally:
                rh.summarize_run, pool._get = real_summarize, original
            ep = max(m[1] for m in seen)
            rows = sorted((m[3], m[4], m[5], m[2]) for m in seen if m[1] == ep)  # worker, start, end, rid
            sched = captured["scheduled"]
            gaps, lat, svc, arr = [], [], [], []
            for k in range(len(rows)):
                w, start, end, rid = rows[k]
                lat.append(end - sched[rid]); svc.append(end - start); arr.append(sched[rid])
                if k + 1 < len(rows) and rows[k + 1][0] == w and sched[rows[k + 1][3]] < end:
                    gaps.append(rows[k + 1][1] - end)
            gaps, lat, svc = np.array(gaps) * 1e3, np.array(lat) * 1e3, np.array(svc) * 1e3
            order = np.argsort(arr)
            a, s = np.array(arr)[order], svc[order] / 1e3
            # one worker: Lindley on the harness's own arrivals and service times, no overhead
            lindley = np.empty_like(s)
            free = -np.inf
            for i in range(len(a)):
                begin = max(a[i], free)
                free = begin + s[i]
                lindley[i] = free - a[i]
            print(f"{config} at {rate:.0f}/s: observed P99 {rec['p99_ms']} ms, P50 {rec['p50_ms']} ms; service mean "
                  f"{svc.mean():.2f} ms; back-to-back gaps n {gaps.size} median {np.median(gaps):.3f} ms mean "
                  f"{gaps.mean():.3f} p90 {np.quantile(gaps, .9):.3f} ms; Lindley on its own service times "
                  f"(one worker, no gaps): P99 {np.quantile(lindley, .99) * 1e3:.1f} ms, P50 {np.median(lindley) * 1e3:.1f} ms",
                  flush=True)


if __name__ == "__main__":
    main()

"""A small multi-process inference server placed by placetune.

Export a study's best config and its launch script, then start one server per worker:

    placetune export --format json --out best_config.json
    placetune export --format numactl --config-path "$PWD/best_config.json" --out launch.sh
    ./launch.sh python examples/serve.py --model m.onnx --port 8500

Each copy is worker $PLACETUNE_WORKER_INDEX: ``deploy.apply()`` pins it to that worker's CPUs, sets
its memory policy, and returns the session options placetune measured; it then listens on
port + index. ``POST /infer`` (optional body: an .npz of inputs) runs the model once on random
inputs of the model's shapes, or on the body's arrays; ``GET /health`` says where the worker runs
and which session options it uses.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from tuner import deploy
from tuner.errors import PlacetuneError


def _entry(options, key: str) -> str:
    try:
        return options.get_session_config_entry(key)
    except Exception:  # ORT raises for a key that was never set
        return ""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="the .onnx file (or onnx:NAME) the config was tuned for")
    parser.add_argument("--port", type=int, default=8500, help="worker i listens on port + i")
    parser.add_argument("--host", default="127.0.0.1")
    args = parser.parse_args()

    try:
        options = deploy.apply()  # pin + memory policy BEFORE the session exists; reads PLACETUNE_* env
    except PlacetuneError as exc:  # e.g. started without the launch script: say so in one line
        sys.exit(f"serve.py: error: {exc} (start it through the exported launch script, which sets "
                 "PLACETUNE_CONFIG and PLACETUNE_WORKER_INDEX)")
    import numpy as np
    import onnxruntime as ort

    from tuner.bench.model import inspect_model, make_inputs

    info = inspect_model(args.model)
    session = ort.InferenceSession(info.path, options, providers=["CPUExecutionProvider"])
    default_feeds = make_inputs(info)
    index = int(os.environ["PLACETUNE_WORKER_INDEX"])
    health = {
        "worker": index, "pid": os.getpid(), "cpus": sorted(os.sched_getaffinity(0)),
        "intra_op_num_threads": options.intra_op_num_threads,
        "inter_op_num_threads": options.inter_op_num_threads,
        "execution_mode": str(options.execution_mode),
        "graph_optimization_level": str(options.graph_optimization_level),
        "intra_op_thread_affinities": _entry(options, "session.intra_op_thread_affinities"),
        "allow_spinning": _entry(options, "session.intra_op.allow_spinning"),
    }

    class Handler(BaseHTTPRequestHandler):
        def _reply(self, code: int, body: dict) -> None:
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            self._reply(200, health) if self.path == "/health" else self._reply(404, {"error": "not found"})

        def do_POST(self) -> None:  # noqa: N802
            if self.path != "/infer":
                return self._reply(404, {"error": "not found"})
            length = int(self.headers.get("Content-Length") or 0)
            feeds = default_feeds
            if length:
                body = self.rfile.read(length)
                try:
                    with np.load(io.BytesIO(body), allow_pickle=False) as data:
                        feeds = {name: data[name] for name in data.files}
                except Exception as exc:  # a body that is not an .npz: tell the client, keep serving
                    return self._reply(400, {"error": f"the body is not an .npz of the model's inputs "
                                                      f"({type(exc).__name__}: {exc})"})
            start = time.perf_counter()
            try:
                outputs = session.run(None, feeds)
            except Exception as exc:  # wrong input names, shapes or dtypes
                return self._reply(400, {"error": f"the inputs do not fit the model ({str(exc).splitlines()[0]})"})
            self._reply(200, {"worker": index, "ms": (time.perf_counter() - start) * 1000,
                              "shapes": [list(o.shape) for o in outputs]})

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer((args.host, args.port + index), Handler)
    # one write() of the whole line: workers share the launcher's stdout, and print() writes the text and
    # its newline separately, so two workers' lines could interleave on one line
    sys.stdout.write(f"worker {index} (pid {os.getpid()}, cpus {health['cpus']}) serving on {args.host}:"
                     f"{server.server_address[1]}\n")
    sys.stdout.flush()
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()

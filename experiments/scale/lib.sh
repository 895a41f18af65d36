# shellcheck shell=bash
# What run.sh and run2.sh share (sourced, not run): finding the CLI and its Python, one wall-clock
# guard for the whole run, steps that each record their own status (a failed or cut step never
# stops the others), machine info, and packing the results for the device tool (which brings
# back only a few files from $OUT).

scale_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
STEP_RESERVE_S=${STEP_RESERVE_S:-10}  # kept back from every step for the summary and the packing (~5 s)
STEP_MIN_S=${STEP_MIN_S:-20}          # a step with less time than this left is skipped, not started
STEP_KILL_AFTER_S=20                  # SIGTERM first (placetune stops its workers), SIGKILL this long after
export PYTHONUNBUFFERED=1             # step logs show progress as it happens (a cut step keeps its lines)

die() { echo "$(basename "$0"): $*" >&2; exit 2; }
say() { echo "[$(date -u +%H:%M:%S)] $*"; }

# find_cli: sets PT (the placetune command) and PY (a Python that imports this checkout's tuner and
# optuna): $PLACETUNE (with $PLACETUNE_PYTHON or python3), else the device bundle's .devbundle/placetune
# (after `bash .devbundle/setup`), else this checkout's .venv, else placetune on PATH. A candidate that
# cannot print its version is passed over.
find_cli() {
  local bundle="$scale_root/.devbundle/placetune"
  if [[ -n "${PLACETUNE:-}" ]]; then
    PT=("$PLACETUNE"); PY=("${PLACETUNE_PYTHON:-python3}")
  elif [[ -x "$bundle" ]] && "$bundle" --version >/dev/null 2>&1; then
    PT=("$bundle")
    PY=(env "PYTHONPATH=/tmp/site:$scale_root${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 python3)
  elif [[ -x "$scale_root/.venv/bin/placetune" ]]; then
    PT=("$scale_root/.venv/bin/placetune"); PY=("$scale_root/.venv/bin/python")
  elif command -v placetune >/dev/null 2>&1; then
    PT=(placetune); PY=("${PLACETUNE_PYTHON:-python3}")
  else
    die "no placetune found: set PLACETUNE, run 'bash .devbundle/setup' on the device, or install the checkout into .venv"
  fi
  local tool
  for tool in timeout tar; do command -v "$tool" >/dev/null || die "$tool is missing (coreutils, tar)"; done
  "${PT[@]}" --version >/dev/null 2>&1 || die "${PT[*]} --version failed: is the CLI installed?"
  (cd "$scale_root" && "${PY[@]}" -c 'import optuna, tuner.bench.measure') 2>/dev/null \
    || die "${PY[*]} cannot import optuna and tuner: set PLACETUNE_PYTHON to the CLI's interpreter"
}

# start_clock BUDGET_S: the whole run must end BUDGET_S seconds from now.
start_clock() { run_began=$(date +%s); deadline=$(( run_began + $1 )); }
seconds_left() { echo $(( deadline - $(date +%s) )); }

# json_str TEXT: TEXT as a JSON string.
json_str() { "${PY[@]}" -c 'import json, sys; print(json.dumps(sys.argv[1]))' "$1"; }

# write_status NAME STATE RC LIMIT_S WALL_S: steps/NAME.status.json (read by summarize.py).
write_status() {
  printf '{"name": %s, "state": %s, "rc": %s, "limit_s": %s, "wall_s": %s, "ended": %s}\n' \
    "$(json_str "$1")" "$(json_str "$2")" "$3" "$4" "$5" "$(json_str "$(date -u +%FT%TZ)")" \
    > "$steps/$1.status.json"
}

# run_step NAME WANT_S CMD...: run CMD in the checkout's root (every path it gets is absolute) for at most WANT_S seconds (less when the
# run's deadline is nearer), output in steps/NAME.log, its status in steps/NAME.status.json: ok,
# failed (rc), timed_out (cut by the guard: SIGTERM, then SIGKILL) or skipped (no time left). Never fails.
run_step() {
  local name=$1 want=$2; shift 2
  local left=$(( $(seconds_left) - STEP_RESERVE_S )) limit=$want rc began wall state
  (( limit > left )) && limit=$left
  printf '%q ' "$@" > "$steps/$name.cmd"; echo >> "$steps/$name.cmd"
  if (( limit < STEP_MIN_S )); then
    say "$name: skipped (${left} s left before the run's deadline)"
    echo "skipped: ${left} s left before the run's deadline" > "$steps/$name.log"
    write_status "$name" skipped null "$limit" 0
    return 0
  fi
  say "$name: at most ${limit} s: $(head -c 300 "$steps/$name.cmd" | tr '\n' ' ')"
  began=$(date +%s)
  (cd "$scale_root" && timeout --signal=TERM --kill-after="$STEP_KILL_AFTER_S" "$limit" "$@") > "$steps/$name.log" 2>&1
  rc=$?
  wall=$(( $(date +%s) - began ))
  if (( rc == 124 || rc == 137 )); then state=timed_out; elif (( rc == 0 )); then state=ok; else state=failed; fi
  write_status "$name" "$state" "$rc" "$limit" "$wall"
  say "$name: $state (exit $rc, ${wall} s)"
  return 0
}

# preflight MODEL=BOUND...: a step that resolves each model and parses each bound, so that a typo in the
# device profile fails in a quick run too, in seconds.
preflight() {
  run_step preflight 120 "${PY[@]}" -c 'import sys
from tuner.bench.model import inspect_model
from tuner.units import parse_bound
for spec in sys.argv[1:]:
    model, bound = spec.split("=")
    info = inspect_model(model)
    print(f"{model}: {info.name} {info.sha256[:12]}, P99 bound {parse_bound(bound) * 1000:g} ms")' "$@"
}

# quick_models DIR: the --quick profile's models, generated (experiments/models.py, fixed seeds) into
# DIR: small.onnx (an MLP of batch 1, ~0.1 ms a request) and medium.onnx (batch 4, ~1 ms). Their
# requests are so cheap that even a loaded 2-core VM serves thousands a second, so every window of the
# server scenario holds its 408 requests in well under a second, as SqueezeNet's do on 16 cores.
quick_models() {
  mkdir -p "$1"
  (cd "$scale_root" && "${PY[@]}" -c 'import sys
from pathlib import Path
from experiments.models import mlp
mlp(Path(sys.argv[1]) / "small.onnx", batch=1, features=64, hidden=256, layers=3)
mlp(Path(sys.argv[1]) / "medium.onnx", batch=4, features=256, hidden=512, layers=4)' "$1") \
    || die "cannot generate the quick profile's models in $1"
}

# machine_info: what the machine was, in machine/ (topology JSON, CPU, kernel, load, versions).
machine_info() {
  local m="$raw/machine"
  mkdir -p "$m"
  timeout 60 "${PT[@]}" topology --json > "$m/topology.json" 2> "$m/topology.err" || true
  (cd "$scale_root" && timeout 60 "${PY[@]}" -c 'import json; from tuner.bench.measure import machine_metadata
print(json.dumps(machine_metadata().to_dict(), indent=1))') > "$m/machine.json" 2> "$m/machine.err" || true
  { echo "date: $(date -u +%FT%TZ)"; echo "nproc: $(nproc)"; echo "uname: $(uname -a)"
    echo "loadavg: $(cat /proc/loadavg)"; echo "commit: $(git -C "$scale_root" rev-parse HEAD 2>/dev/null || echo unknown)"
    echo "cli: ${PT[*]}"; free -m 2>/dev/null; command -v lscpu >/dev/null && lscpu; } > "$m/host.txt" 2>&1
}

# The caller sets out (the output folder) and keep_raw (0 or 1) before results_folder and finish.
# finish NAME SUMMARY_KIND: summary.md from the raw artefacts (the summariser's own failure becomes
# the summary); unless --keep-raw, OUT gets NAME-summary.md and NAME.tar.gz of the raw folder, which is
# then removed (the device tool returns only a few files from $OUT).
finish() {
  local name=$1 kind=$2
  : "${keep_raw:?}"
  (cd "$scale_root" && timeout 120 "${PY[@]}" -m experiments.scale.summarize "$kind" "$raw") > "$steps/summary.log" 2>&1 \
    || { echo "# $name: the summariser failed"; echo; echo '```'; tail -20 "$steps/summary.log"; echo '```'; } \
       > "$raw/summary.md"
  if (( keep_raw )); then
    say "results: $raw (summary.md inside)"
  else
    cp "$raw/summary.md" "$out/$name-summary.md"
    tar -C "$(dirname "$raw")" -czf "$out/$name.tar.gz" "$(basename "$raw")" && rm -rf "$raw"
    say "results: $out/$name-summary.md, $out/$name.tar.gz"
  fi
  say "wall time $(( $(date +%s) - run_began )) s"
}

# results_folder NAME: sets raw and steps (with --keep-raw the output folder itself holds the raw files).
results_folder() {
  mkdir -p "$out" || die "--out $out: cannot create it"
  out=$(cd "$out" && pwd)
  if (( keep_raw )); then raw=$out; else raw="$out/$1"; fi
  [[ -e "$raw/steps" ]] && die "$raw already holds a run (steps/): give another --out"
  steps="$raw/steps"
  mkdir -p "$steps"
}

#!/usr/bin/env bash
# Scale proof II (issue 21): repeatability, screening calibration and two models at once on the lent
# 16-core machine, in at most 8 min 40 s of wall time.
#
# On the device (once per checkout, here: bash ../shared/device/bundle; then a run with
# carry [".devbundle"] and timeout_s 590; the setup takes ~15 s, the run at most 520 s):
#     bash .devbundle/setup && bash experiments/scale/run2.sh --out $OUT
# One part alone, with the whole budget (the mix: with the other parts it gets only its baselines; alone,
# 3 configs and a 3-round race against the even split and the ORT default):
#     bash .devbundle/setup && bash experiments/scale/run2.sh --parts mix --out $OUT
# Here (2 cores; a test of the script, not a proof; at most 10 min on a shared VM):
#     bash experiments/scale/run2.sh --quick --keep-raw --out experiments/results/scale2-quick-2cpu-DATE
#
# Parts (each a step with its own status and time cap; a failed or cut part does not stop the next):
#   repeat     16x1 SqueezeNet (one 1-core worker per core) at P99 <= 50 ms, 5 rounds interleaved with
#              the ORT default (experiments/repeatability.py --back-to-back 0): per-run req/s, CV,
#              throughput_ci, interference and every window's steal and foreign load
#   calibrate  10 configs measured as a screening trial and in full, interleaved
#              (experiments/scale/screen_calibration.py): the cost ratio and lognormal error
#   mix        optimize --deployment: SqueezeNet + ResNet-50 sharing the cores, its final race vs the
#              even split and the ORT default
# summary.md is made from the raw files by experiments/scale/summarize.py (run2). Without --keep-raw,
# OUT holds just scale2-summary.md and scale2.tar.gz.
set -uo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=experiments/scale/lib.sh
source "$here/lib.sh"

usage() {
  cat <<'EOF'
usage: run2.sh --out DIR [--quick] [--keep-raw] [--budget SECONDS] [--parts repeat,calibrate,mix]
  --out DIR        where the results go (on the device: $OUT)
  --quick          the 2-core test profile: two generated MLPs (thousands of requests a second even
                   on a loaded VM) for SqueezeNet and ResNet-50, loose bounds, fewer runs and configs
  --keep-raw       leave the raw folder unpacked in DIR (no tarball)
  --budget S       wall-clock limit of the whole run (default 520; --quick: 600)
  --parts LIST     which parts, in this order (default: repeat,calibrate,mix); a part alone gets the budget
EOF
}

# The whole run is one function, parsed before it starts: editing this file mid-run cannot change it.
main() {
out="" quick=0 keep_raw=0 budget="" parts="repeat,calibrate,mix"
while (( $# )); do
  case $1 in
    --out) [[ $# -ge 2 ]] || die "--out needs a folder"; out=$2; shift 2 ;;
    --quick) quick=1; shift ;;
    --keep-raw) keep_raw=1; shift ;;
    --budget) [[ $# -ge 2 && $2 =~ ^[0-9]+$ ]] || die "--budget needs whole seconds, e.g. --budget 510"
              budget=$2; shift 2 ;;
    --parts) [[ $# -ge 2 && $2 =~ ^(repeat|calibrate|mix)(,(repeat|calibrate|mix))*$ ]] \
               || die "--parts takes a comma-separated list of repeat, calibrate, mix"
             parts=$2; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) usage >&2; die "unknown argument '$1'" ;;
  esac
done
[[ -n $out ]] || { usage >&2; die "--out DIR is required (on the device: --out \$OUT)"; }

# Each part's time cap (s, when it runs with the others) and its settings. Device: the repeat's and
# the mix's windows are 1 s (>= 408 SqueezeNet requests at 16-core rates; ResNet-50's windows are sized
# by the verdict's 408 requests anyway); the calibration keeps the study's default 2 s windows, since
# the cost ratio it measures is the default's. Estimates (experiments/scale/README.md): repeat ~120 s,
# calibrate ~25 s per config (8 or 9 of the 10 fit), mix ~45 s per measurement, ~30 s per race run.
if (( quick )); then
  : "${budget:=600}"
  models=$(mktemp -d)
  trap 'rm -rf "$models"' EXIT
  small=$models/small.onnx small_p99=100ms big=$models/medium.onnx big_p99=200ms
  repeat_cap=150 repeat_args=(--runs 2 --window 0.5s)
  calibrate_cap=150 calibrate_args=(--configs 3 --window 0.5s)
  mix_cap=300 mix_args=(--n-trials 2 --revalidate 2 --window 0.5s)
else
  : "${budget:=520}"
  small=onnx:squeezenet small_p99=50ms big=onnx:resnet50 big_p99=300ms
  repeat_cap=130 repeat_args=(--runs 5 --window 1s)
  calibrate_cap=230 calibrate_args=(--configs 10 --window 2s)
  # with the other parts, ~120 s are left: the two baselines' load factors, no race
  mix_cap=480 mix_args=(--n-trials 2 --revalidate 0 --window 1s)
  mix_alone_args=(--n-trials 3 --revalidate 3 --window 1s)  # ~150 s of trials, ~315 s of race
fi
IFS=, read -ra chosen <<< "$parts"
if (( ${#chosen[@]} == 1 )); then
  repeat_cap=$budget calibrate_cap=$budget mix_cap=$budget
  (( quick )) || mix_args=("${mix_alone_args[@]}")
fi

start_clock "$budget"
find_cli
(( quick )) && quick_models "$models"
results_folder scale2
cores=$(cd "$scale_root" && "${PY[@]}" -c 'from tuner.machine.sysfs import read_topology
print(len(read_topology("/").cores()))') || die "cannot read this machine's topology"
say "scale proof II: $( ((quick)) && echo quick || echo device) profile, parts $parts, $cores cores, budget ${budget} s"
{ echo "profile: $( ((quick)) && echo quick || echo device); budget_s: $budget; parts: $parts; cores: $cores"
  echo "models: $small at $small_p99, $big at $big_p99"; } > "$raw/plan.txt"
preflight onnx:squeezenet=50ms onnx:resnet50=300ms  # the device profile's, in a quick run too
machine_info

# part_cap CAP: the part's cap, or what is left of the run when that is less.
part_cap() { local left=$(( $(seconds_left) - STEP_RESERVE_S )); echo $(( $1 < left ? $1 : left )); }

for part in "${chosen[@]}"; do
  mkdir -p "$raw/$part"
  case $part in
    repeat)
      cap=$(part_cap "$repeat_cap")
      run_step repeat "$cap" "${PY[@]}" -m experiments.repeatability --model "$small" --p99 "$small_p99" \
        --workers "$cores" --cores-per-worker 1 --intra-op 1 --back-to-back 0 --min-requests 0 \
        --stop-after "$(( cap > 25 ? cap - 15 : 10 ))s" --out "$raw/repeat/repeatability.json" "${repeat_args[@]}" ;;
    calibrate)
      cap=$(part_cap "$calibrate_cap")
      run_step calibrate "$cap" "${PY[@]}" -m experiments.scale.screen_calibration --model "$small" \
        --p99 "$small_p99" --stop-after "$(( cap > 25 ? cap - 15 : 10 ))s" \
        --out "$raw/calibrate/calibration.jsonl" "${calibrate_args[@]}" ;;
    mix)
      cat > "$raw/mix/deployment.yaml" <<EOF
# Scale proof II: two models sharing the machine; equal traffic shares keep the slow model's rate (and
# so its windows, sized by the verdict's 408 requests) as high as the mix allows.
shared_cores: false
models:
  - {name: small, model: $small, p99: $small_p99, share: 1}
  - {name: big, model: $big, p99: $big_p99, share: 1}
EOF
      cap=$(part_cap "$mix_cap")
      run_step mix "$cap" "${PT[@]}" optimize --deployment "$raw/mix/deployment.yaml" --no-mlflow \
        --storage "sqlite:///$raw/mix/placetune.db" --out "$raw/mix/best_deployment.json" "${mix_args[@]}"
      cp "$steps/mix.log" "$raw/mix/study.log" ;;
  esac
done

finish scale2 run2
}

main "$@"
exit $?

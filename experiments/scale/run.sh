#!/usr/bin/env bash
# Scale proof I (issue 20): the default study of SqueezeNet (P99 <= 50 ms) and ResNet-50 (P99 <= 300 ms)
# on the lent 16-core machine, each ending in the final race, in at most 8 min 40 s of wall time.
#
# On the device (once per checkout, here: bash ../shared/device/bundle; then a run with
# carry [".devbundle"] and timeout_s 590; the setup takes ~15 s, the run at most 520 s):
#     bash .devbundle/setup && bash experiments/scale/run.sh --out $OUT
# Here (2 cores; a test of the script, not a proof; at most 10 min on a shared VM):
#     bash experiments/scale/run.sh --quick --keep-raw --out experiments/results/scale-quick-2cpu-DATE
#
# Writes the study log, best_config.json (with the race), the study DB (placetune.db), each step's
# command, log and status, and machine info; then summary.md, made from those files by
# experiments/scale/summarize.py. Without --keep-raw, OUT holds just scale1-summary.md and
# scale1.tar.gz (the raw folder). Every step is cut by the run's wall-clock guard (SIGTERM: placetune
# stops its workers and keeps the best config so far); a failed or cut step does not stop the next.
set -uo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=experiments/scale/lib.sh
source "$here/lib.sh"

usage() {
  cat <<'EOF'
usage: run.sh --out DIR [--quick] [--keep-raw] [--budget SECONDS]
  --out DIR        where the results go (on the device: $OUT)
  --quick          the 2-core test profile: two generated MLPs (thousands of requests a second even
                   on a loaded VM) for SqueezeNet and ResNet-50, loose bounds, small budgets
  --keep-raw       leave the raw folder unpacked in DIR (no tarball)
  --budget S       wall-clock limit of the whole run (default 520; --quick: 600)
EOF
}

# The whole run is one function, parsed before it starts: editing this file mid-run cannot change it.
main() {
out="" quick=0 keep_raw=0 budget=""
while (( $# )); do
  case $1 in
    --out) [[ $# -ge 2 ]] || die "--out needs a folder"; out=$2; shift 2 ;;
    --quick) quick=1; shift ;;
    --keep-raw) keep_raw=1; shift ;;
    --budget) [[ $# -ge 2 && $2 =~ ^[0-9]+$ ]] || die "--budget needs whole seconds, e.g. --budget 510"
              budget=$2; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) usage >&2; die "unknown argument '$1'" ;;
  esac
done
[[ -n $out ]] || { usage >&2; die "--out DIR is required (on the device: --out \$OUT)"; }

# One study per line: name, model, bound, step cap (s), trial phase (--timeout, s), what the study needs
# after its trial phase besides the race (its last trial and the start, s), extra optimize flags; the
# race gets --race-timeout = cap - trial phase - that (at least 2 rounds run whatever it is).
# Device (estimates in experiments/scale/README.md): SqueezeNet's windows hold >= 408 requests in 1 s
# at 16-core rates; ResNet-50's are sized by those 408 requests anyway (2.5-4.5 s at 90-180 req/s), so
# --window 1s only shortens its probes. SqueezeNet: ~60 s of trials (4 baselines, then screening),
# 2 race rounds of 5 entrants (~100 s). ResNet-50: its 4 baselines (--n-trials 4, ~120 s), 2 race
# rounds of 4 entrants (~180 s): a fifth config would push its race past the run's 9 minutes.
if (( quick )); then
  : "${budget:=600}"
  models=$(mktemp -d)
  trap 'rm -rf "$models"' EXIT
  studies=(
    "small $models/small.onnx 100ms 260 90 40 --n-trials 5 --window 0.5s"
    "medium $models/medium.onnx 200ms 260 60 40 --n-trials 3 --window 0.5s"
  )
else
  : "${budget:=520}"
  studies=(
    "squeezenet onnx:squeezenet 50ms 190 60 30 --window 1s"
    "resnet50 onnx:resnet50 300ms 480 150 40 --n-trials 4 --window 1s"
  )
fi
# The device profile's models and bounds are resolved first, in a quick run too: a typo there fails here.
checked_models=(onnx:squeezenet=50ms onnx:resnet50=300ms)

start_clock "$budget"
find_cli
(( quick )) && quick_models "$models"
results_folder scale1
say "scale proof I: $( ((quick)) && echo quick || echo device) profile, budget ${budget} s, results in $raw"
{ echo "profile: $( ((quick)) && echo quick || echo device); budget_s: $budget"
  printf 'study: %s\n' "${studies[@]}"; } > "$raw/plan.txt"

preflight "${checked_models[@]}"
machine_info

for line in "${studies[@]}"; do
  read -r name model bound want trial_s tail_s extra <<< "$line"
  read -ra extra_flags <<< "$extra"
  mkdir -p "$raw/$name"
  left=$(( $(seconds_left) - STEP_RESERVE_S ))
  cap=$(( want < left ? want : left ))
  race_s=$(( cap - trial_s - tail_s ))
  (( race_s < 10 )) && race_s=10  # the race still runs its 2 rounds; the step's guard cuts it
  run_step "$name" "$cap" "${PT[@]}" optimize --model "$model" --p99 "$bound" --no-mlflow \
    --storage "sqlite:///$raw/$name/placetune.db" --out "$raw/$name/best_config.json" \
    --timeout "${trial_s}s" --revalidate 1 --race-timeout "${race_s}s" "${extra_flags[@]}"
  cp "$steps/$name.log" "$raw/$name/study.log"
done

finish scale1 run1
}

main "$@"
exit $?

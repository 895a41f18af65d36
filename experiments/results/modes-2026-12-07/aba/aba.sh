cd "$(git rev-parse --show-toplevel)"; OUT=${OUT:-/tmp/aba}; mkdir -p $OUT
for i in 1 2 3; do
  echo "pt$i start $(date +%T)"
  .venv/bin/placetune measure --model onnx:squeezenet --p99 100ms --config experiments/results/modes-2026-12-07/aba/ortdef.json --json > $OUT/pt$i.json 2>$OUT/pt$i.err
  if [ $i -lt 3 ]; then echo "h$i start $(date +%T)"; .venv/bin/python -m experiments.reference_harness --cases squeezenet:100ms --configs ort_default --out $OUT/h$i > $OUT/h$i.txt 2>&1; fi
done
echo "end $(date +%T)"

#!/usr/bin/env bash
# The measurements the issues ask for on an accelerator, one after the other, each writing its JSON
# to benchmarks/results/<name>_<TAG>.json (TAG names the device, e.g. h100).
#   bash benchmarks/run_all.sh TAG [NAME ...]     NAME: the entries below (default: all of them)
#   DEVICE=cpu bash benchmarks/run_all.sh cpu optim_step    # the same on another device
set -euo pipefail
cd "$(dirname "$0")/.."
tag=${1:?usage: bash benchmarks/run_all.sh TAG [NAME ...]}
shift
device=${DEVICE:-cuda}
all=(train_step train_step_large optim_step fd_overhead factorized_linear factorized_linear_bf16 translation_throughput)
names=("$@")
[ ${#names[@]} -gt 0 ] || names=("${all[@]}")
export PYTHONPATH=".${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1
bf16=$([ "$device" = cuda ] && echo --bf16 || true)

for name in "${names[@]}"; do
  out=benchmarks/results/${name}_${tag}.json
  echo "== $name -> $out" >&2
  case $name in
    train_step) python benchmarks/train_step.py --device "$device" $bf16 --out "$out" ;;
    train_step_large) python benchmarks/train_step.py --device "$device" $bf16 --preset bert-large --out "$out" ;;
    optim_step) python benchmarks/optim_step.py --device "$device" --out "$out" ;;
    fd_overhead) python benchmarks/fd_overhead.py --device "$device" $bf16 --batch 32 --out "$out" ;;
    factorized_linear) python benchmarks/factorized_linear.py --device "$device" --out "$out" ;;
    factorized_linear_bf16) python benchmarks/factorized_linear.py --device "$device" --dtype bfloat16 --out "$out" ;;
    translation_throughput) python benchmarks/translation_throughput.py --device "$device" $bf16 --out "$out" ;;
    *) echo "unknown benchmark '$name'; known: ${all[*]}" >&2; exit 2 ;;
  esac
done

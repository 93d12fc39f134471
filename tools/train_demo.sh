#!/usr/bin/env bash
# Reproduces the demo checkpoints in mambapanel/checkpoints/: one vmamba-micro per patch
# order and two vim-micro (bidirectional, the official order, and morton), trained on the
# `demo` dataset (scikit-learn's digits, 20 % held out) with seed 0, one torch thread each
# (bit-for-bit repeatable on one machine; the thread count changes the last bits). Two
# trainings run at a time: about 40 minutes on 2 busy CPU cores.
# Run from the repository root after tools/setup.sh; `vim` or `vmamba` as the first argument
# trains only that family.
set -euo pipefail
PYTHON=${PYTHON:-.venv/bin/python}
EPOCHS=${EPOCHS:-15}
export OMP_NUM_THREADS=1

train() {
    local model=$1
    shift
    for order in "$@"; do
        "$PYTHON" -m compute train --model "$model" --order "$order" --data demo \
            --epochs "$EPOCHS" --seed 0 --out "mambapanel/checkpoints/$model-$order.pth"
    done
}
family=${1:-all}
if [ "$family" != vim ]; then
    train vmamba-micro cross morton hilbert &
    first=$!
    train vmamba-micro diagonal spiral bidirectional
    wait "$first"
fi
if [ "$family" != vmamba ]; then
    train vim-micro bidirectional &
    first=$!
    train vim-micro morton
    wait "$first"
fi

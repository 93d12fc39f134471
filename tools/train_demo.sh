#!/usr/bin/env bash
# Reproduces the demo checkpoints in mambapanel/checkpoints/: one vmamba-micro per patch
# order, trained on the `demo` dataset (scikit-learn's digits, 20 % held out) with seed 0,
# one torch thread each (bit-for-bit repeatable on one machine; the thread count changes
# the last bits). Two trainings run at a time: about 20 minutes on 2 busy CPU cores.
# Run from the repository root after tools/setup.sh.
set -euo pipefail
PYTHON=${PYTHON:-.venv/bin/python}
EPOCHS=${EPOCHS:-15}
export OMP_NUM_THREADS=1

train() {
    for order in "$@"; do
        "$PYTHON" -m compute train --model vmamba-micro --order "$order" --data demo \
            --epochs "$EPOCHS" --seed 0 --out "mambapanel/checkpoints/vmamba-micro-$order.pth"
    done
}
train cross morton hilbert &
first=$!
train diagonal spiral bidirectional
wait "$first"

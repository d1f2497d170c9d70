#!/usr/bin/env bash
# The schedule-transfer loop on the bundled digits (experiment=transfer_demo), on a CPU in
# minutes: graft, transfer, train D with the transferred schedule, compare.
#
#   bash scripts/transfer_demo.sh [RESULTS_DIR]      # `make transfer-demo`; default: results
#
# GRAFTBENCH names the command (default: graftbench). Every step is an ordinary command; a
# second run of the script finds every run done and only redraws the table and figures.
set -euo pipefail

results="${1:-results}"
gb=(${GRAFTBENCH:-graftbench})
demo=(experiment=transfer_demo "results_dir=$results")

train() {  # the run directory a `graftbench train` reports on its last line
    "${gb[@]}" train "${demo[@]}" "$@" | tee /dev/stderr | sed -n 's/^results: //p' | tail -n 1
}

echo "== 1. graft: AdaGrad's step size on SGD's direction, and both optimizers alone" >&2
grafted=$(train magnitude=adagrad direction=sgd)
train magnitude=sgd >/dev/null
train magnitude=adagrad >/dev/null

echo "== 2. transfer: adagrad#sgd's per-layer ratio, its schedule divided out" >&2
for kind in static piecewise; do
    "${gb[@]}" transfer "$grafted" --kind "$kind" >&2
done

echo "== 3. train SGD alone with each transferred schedule" >&2
for kind in static piecewise; do
    train magnitude=sgd schedule=transferred "schedule.source=$grafted/transfer-$kind.json" \
        >/dev/null
done

echo "== 4. compare" >&2
"${gb[@]}" table "$results/transfer_demo" --transfer
"${gb[@]}" plot "$results/transfer_demo"

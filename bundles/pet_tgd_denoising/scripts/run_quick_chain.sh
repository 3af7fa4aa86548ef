#!/usr/bin/env bash
# The quick chain on the simulated cohort (CPU, about 6 minutes on 2 cores once the cohort exists): generate the cohort on first use,
# fine-tune the shipped v1-net on the v2 fine-tuning studies as FT-net (last three blocks) and as TGD-net, then
# evaluate v1-net, FT-net and TGD-net on the v2 test studies and print the table. Extra arguments are passed to
# every workflow, e.g. `--epochs 5`.
set -euo pipefail
cd "$(dirname "$0")/.."
run() {
    echo "+ python -m monai.bundle run --config_file \"['configs/common.json','configs/$1.json']\" ${*:2}"
    python -m monai.bundle run --config_file "['configs/common.json','configs/$1.json']" "${@:2}"
}
run finetune "$@"
run finetune_tgd "$@"
run evaluate "$@"

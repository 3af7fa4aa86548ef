#!/usr/bin/env bash
# The quick chain on the simulated cohort (CPU, 2 cores; time in the model card): generate the cohort on first use,
# fine-tune the shipped v1-net (models/model_v1.pt) on the v2 fine-tuning studies as FT-net (last three blocks) and
# as TGD-net (the bundle's default TGD), each until its loss on the validation study flattens (the same
# PlateauStopHandler rule for both, capped at CHAIN_EPOCHS epochs; each keeps its weights of the best validation,
# restore_best.json), then evaluate v1-net, FT-net and TGD-net on the
# test studies (v2 and v1: adaptation and forgetting) and print the table.
# Every output goes to runs/quick_chain/ (CHAIN_DIR): the shipped weights under models/ are only read.
# Extra arguments are passed to every workflow, e.g. `--epochs 5`.
set -euo pipefail
cd "$(dirname "$0")/.."
RUN="${CHAIN_DIR:-runs/quick_chain}"
EPOCHS="${CHAIN_EPOCHS:-150}"
mkdir -p "$RUN"
run() {
    echo "+ python -m monai.bundle run --config_file \"['configs/inference.json','configs/train.json',$1]\" ${*:2}"
    python -m monai.bundle run --config_file "['configs/inference.json','configs/train.json',$1]" "${@:2}"
}
tune=(--output_dir "$RUN" --epochs "$EPOCHS" --curve_interval 10 --early_stop_patience 3)
run "'configs/finetune.json','configs/loss_curve.json','configs/restore_best.json'" "${tune[@]}" --final_model "$RUN/model_ft.pt" "$@"
run "'configs/finetune_tgd.json','configs/loss_curve.json','configs/restore_best.json'" "${tune[@]}" --final_model "$RUN/model_tgd.pt" "$@"
run "'configs/evaluate.json'" --output_dir "$RUN" --eval_recon all --eval_roi_slices_only true \
    --eval_networks "{'v1-net': 'models/model_v1.pt', 'FT-net': '$RUN/model_ft.pt', 'TGD-net': '$RUN/model_tgd.pt'}" "$@"

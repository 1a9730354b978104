#!/usr/bin/env bash
# Recipe of the shipped demo weights (models/small): the small profile, all three stages, on a synthetic
# TRAINING cohort (400 knees, generator seed 1, MRI matrix 256: 280 training / 120 validation knees), on CPU,
# then the two ablation diffusion models that docs/results.md compares (ABLATIONS=0 skips them). The demo's
# cohort (data/cohort, seed 0) is never trained on: every one of its knees is held out. A stage whose final
# checkpoint is already in $MODELS is kept (the shipped autoencoder was reused this way, see
# models/small/training_record.json). Diffusion (v-prediction, 6480 iterations): ~30 min per model alone on 2
# cores (the three side by side, one thread each: ~65 min); an autoencoder from scratch adds about an hour.
# Run it in the background with a log:
#   nohup scripts/train_small_demo.sh > outputs/train_small.log 2>&1 &
# PARALLEL=1 trains the three diffusion models side by side, one thread each (logs only in $OUT/<name>.log):
# ~65 min on 2 cores instead of ~100 one after the other.
# Writes models/small/{autoencoder,classifier,diffusion}.pt, the ablations
# models/small/diffusion_{xray_no_guidance,ldm_depth_only}.pt and models/small/training_record.json.
# FRAME=pose trains all of it in the opt-in canonical-pose MRI frame (configs/pose_frame.json, docs/data.md
# section 3b): the first stage builds $MODELS/mri_pose_template.pt from 40 training knees, which ships beside the
# weights (inference and evaluation read it from there).
# AE_EPOCHS (default 26, the shipped autoencoder's) sets the autoencoder's epochs: it was far from its plateau
# there (docs/training.md, session 17: continued to 80 epochs its ceiling rose from RSSIM 0.625 to 0.786).
# The weights are DEMO weights trained on synthetic knees only: not for any clinical or research claim.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
COHORT=${COHORT:-data/cohort_train}
OUT=${OUT:-outputs/train_small}
MODELS=${MODELS:-models/small}
SEED=1; KNEES=400; MATRIX=256
[ -f "$COHORT/cohort.json" ] || "$PY" -m xray2mri_bundle.cohort --out "$COHORT" --knees $KNEES --seed $SEED --mri-matrix $MATRIX
mkdir -p "$OUT" "$MODELS"
# EXTRA_KNEES=N adds the N knees of a second cohort (generator seed 2, made once) to the training split, the
# validation split stays the training cohort's (xray2mri index --add-training; docs/training.md, session 16: 1080
# knees stop the memorising that 280 show at longer budgets). DIFF_EPOCHS and DECAY set the diffusion stage's
# (and the ablations') --diffusion_max_epochs and --diffusion_lr_decay_steps (default: the configs').
# A stage already finished in $MODELS is kept whatever the data: give an empty MODELS folder for a new training set.
DATA_ARGS=()
[[ "${EXTRA_KNEES:-0}" =~ ^[0-9]+$ ]] || { echo "EXTRA_KNEES must be a whole number, got ${EXTRA_KNEES}" >&2; exit 2; }
if [ "${EXTRA_KNEES:-0}" -gt 0 ]; then
  EXTRA=${EXTRA_COHORT:-${COHORT}_seed2_${EXTRA_KNEES}}
  [ -f "$EXTRA/cohort.json" ] || "$PY" -m xray2mri_bundle.cohort --out "$EXTRA" --knees "$EXTRA_KNEES" --seed 2 --mri-matrix $MATRIX
  # indexed anew on every run (minutes, next to hours of training), so the datalist always matches the knobs
  "$PY" -m xray2mri_bundle.cli index --root "$COHORT" --add-training "$EXTRA" --out "$OUT/datalist.json"
  DATA_ARGS=(--datalist_file "$OUT/datalist.json")
fi
DIFF_ARGS=()
[ -n "${DIFF_EPOCHS:-}" ] && DIFF_ARGS+=(--diffusion_max_epochs "$DIFF_EPOCHS")
[ -n "${DECAY:-}" ] && DIFF_ARGS+=(--diffusion_lr_decay_steps "$DECAY")
case "${FRAME:-joint}" in
  joint) OVERLAY="" ;;
  pose) OVERLAY="'configs/pose_frame.json'," ;;
  *) echo "FRAME must be joint or pose, got ${FRAME}" >&2; exit 2 ;;
esac
# a pose-frame run trains every stage in that frame: checkpoints without a template are another frame's (a finished
# stage would be kept, not retrained); the autoencoder stage, which runs first, builds the template
if [ -n "$OVERLAY" ] && [ ! -f "$MODELS/mri_pose_template.pt" ] && compgen -G "$MODELS/*.pt" > /dev/null; then
  echo "FRAME=pose: $MODELS holds checkpoints but no mri_pose_template.pt (trained in the joint-centred frame);" \
       "give an empty MODELS folder" >&2
  exit 2
fi
# one stage of configs/train.json; the wall time (s) goes to $OUT/<stage>.wall
train_stage() {
  local stage=$1 start; start=$(date +%s); shift
  # an autoencoder epoch draws one slice per knee: 26 epochs of 280 knees ~ the 900 iterations it had before
  local epochs=(); [ "$stage" = autoencoder ] && epochs=(--autoencoder_max_epochs "${AE_EPOCHS:-26}")
  [ "$stage" = diffusion ] && epochs=("${DIFF_ARGS[@]}")
  "$PY" -m monai.bundle run training \
    --config_file "['configs/train.json',${OVERLAY}'configs/profiles/small.json']" \
    --stages "['$stage']" --dataset_dir "$COHORT" "${DATA_ARGS[@]}" --output_dir "$OUT" --model_dir "$MODELS" \
    "${epochs[@]}" "$@"
  echo $(( $(date +%s) - start )) > "$OUT/$stage.wall"
}
# The ablations of docs/results.md: the diffusion stage alone, same settings, fewer conditions.
declare -A ABLATION=(
  [diffusion_xray_no_guidance]="--use_guidance False --use_intensity False"
  [diffusion_ldm_depth_only]="--use_xray_latent False --use_context False --use_guidance False --use_intensity False"
)
train_ablation() {
  local name=$1 start; start=$(date +%s); shift
  # shellcheck disable=SC2086
  "$PY" -m monai.bundle run \
    --config_file "['configs/common.json',${OVERLAY}'configs/profiles/small.json','configs/train_diffusion.json']" \
    --dataset_dir "$COHORT" "${DATA_ARGS[@]}" --output_dir "$OUT" --model_dir "$MODELS" ${ABLATION[$name]} "${DIFF_ARGS[@]}" \
    --final_path "$MODELS/$name.pt" --checkpoint_dir "$OUT/small/$name" "$@"
  echo $(( $(date +%s) - start )) > "$OUT/$name.wall"
}
for stage in autoencoder classifier; do
  train_stage "$stage" "$@" 2>&1 | tee "$OUT/$stage.log"
done
[ "${ABLATIONS:-1}" = 1 ] && NAMES=(diffusion_xray_no_guidance diffusion_ldm_depth_only) || NAMES=()
if [ "${PARALLEL:-0}" = 1 ]; then
  export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
  train_stage diffusion "$@" > "$OUT/diffusion.log" 2>&1 &
  pids=($!)
  for name in "${NAMES[@]}"; do train_ablation "$name" "$@" > "$OUT/$name.log" 2>&1 & pids+=($!); done
  for pid in "${pids[@]}"; do wait "$pid"; done
else
  train_stage diffusion "$@" 2>&1 | tee "$OUT/diffusion.log"
  for name in "${NAMES[@]}"; do train_ablation "$name" "$@" 2>&1 | tee "$OUT/$name.log"; done
fi
WALL_ARGS=()
for name in autoencoder classifier diffusion "${NAMES[@]}"; do WALL_ARGS+=("$name=$(cat "$OUT/$name.wall")"); done
# Inference-only copies (EMA weights, weight-only int8; docs/training.md gives the measured effect): the full exports move
# to $OUT/full_exports (never into git), the slim ones take their place in $MODELS.
mkdir -p "$OUT/full_exports"
for file in "$MODELS"/*.pt; do  # the checkpoints; the pose frame's template stays beside the weights
  if [ "${file##*/}" != mri_pose_template.pt ]; then mv "$file" "$OUT/full_exports/"; fi
done
# sed reads the whole list: `head -n 1` would close the pipe early and, under pipefail, stop the script
CHECK_XRAY=$(find "$COHORT/0.E.1" -type f | sort | sed -n 1p)
"$PY" scripts/slim_weights.py --models "$OUT/full_exports" --out "$MODELS" --check-xray "$CHECK_XRAY" \
  | tee "$OUT/slim_weights.json"
"$PY" -m xray2mri_bundle.cli training-record --models "$MODELS" --logs "$OUT" --cohort "$COHORT" \
  --wall "${WALL_ARGS[@]}" \
  --command "$(for knob in FRAME PARALLEL ABLATIONS AE_EPOCHS EXTRA_KNEES EXTRA_COHORT DIFF_EPOCHS DECAY; do
                [ -n "${!knob:-}" ] && printf '%s=%s ' "$knob" "${!knob}"; done)scripts/train_small_demo.sh $*"

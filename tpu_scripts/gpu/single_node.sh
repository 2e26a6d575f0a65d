#!/usr/bin/env bash
# Train on one GPU node: one process that drives all local GPUs, with the GPU XLA flags.
# shellcheck source=tpu_scripts/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/../common.sh"
# shellcheck source=tpu_scripts/gpu/gpu_env.sh
source "$(dirname "${BASH_SOURCE[0]}")/gpu_env.sh"

usage() {
  cat <<EOF
Usage: gpu/single_node.sh --gin_file FILE [--gin_file FILE...] --model_dir DIR
                          [--gin.KEY=VALUE...] [options]

Runs alexatm-train in the foreground, in --workdir, as ONE process that sees every GPU of this
machine (CUDA_VISIBLE_DEVICES narrows it down), so no coordinator is involved (the
ALEXATM_COORDINATOR_ADDRESS / ALEXATM_NUM_PROCESSES / ALEXATM_PROCESS_ID variables are
removed from its environment). The script execs the trainer, so Ctrl-C / SIGTERM reach it
directly: it saves a checkpoint and exits. XLA flags and environment: see gpu/gpu_env.sh
(the dry run prints them all).

${TRAINING_OPTIONS_HELP}

Other options:
  --dry-run                  print the exact command; run nothing
  -h, --help                 this help

Example (one 8x H100 node):
  tpu_scripts/gpu/single_node.sh --gin_file gin/experiments/alexatm_20b_h100_16x8.gin \\
      --model_dir /checkpoints/alexatm-1node --gin.MESH_FSDP=8 --gin.TRAIN_STEPS=100
EOF
}

while (($#)); do
  case "$1" in
    -h | --help) usage; exit 0 ;;
    --dry-run | --dry_run) DRY_RUN=1; shift ;;
    *)
      parse_training_option "$@" || die "unknown argument '$1'"
      shift "$SHIFT_BY"
      ;;
  esac
done

validate_training_options
gpu_env_assignments
trainer_command
if ((!DRY_RUN)); then
  command -v "${TRAINER_CMD[0]}" >/dev/null 2>&1 ||
    die "${TRAINER_CMD[0]} not found: install the package (pip install -e . and jax[cuda12]) or pass --venv DIR"
fi

note "one process, all local GPUs; working directory ${WORKDIR}"
run cd "$WORKDIR"
run_exec env -u ALEXATM_COORDINATOR_ADDRESS -u ALEXATM_NUM_PROCESSES -u ALEXATM_PROCESS_ID \
  "${GPU_ENV[@]}" "${TRAINER_CMD[@]}"

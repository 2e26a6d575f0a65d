# shellcheck shell=bash disable=SC2034  # variables here are used by the scripts that source it
# Shared by gpu/single_node.sh and gpu/slurm_launch.sh: the XLA flags and environment for
# NVIDIA GPUs, and the training options both scripts accept. Source it after common.sh.
#
# Why these XLA flags (every name is checked against the installed jaxlib by
# tests/test_tpu_scripts.py, which starts JAX with them: XLA aborts on an unknown flag):
#   latency_hiding_scheduler=true   schedule collectives early so they overlap with compute
#   triton_gemm=false               use cuBLAS for matmuls (Triton GEMMs are slower for the
#                                   large bf16 matmuls of a 20B transformer)
#   pipelined_all_gather/reduce_scatter/all_reduce=true and while_loop_double_buffering=true
#                                   prefetch the next scanned layer's FSDP all-gather and
#                                   overlap the previous layer's gradient reduce-scatter
#                                   (the model scans over layers)
#   *_combine_threshold_bytes       merge small collectives into few big ones (default 1 GiB)
#   *_combine_by_dim=false          allow combining collectives along different dimensions
# Environment:
#   XLA_PYTHON_CLIENT_MEM_FRACTION  GPU memory JAX preallocates (default 0.90; JAX's own is 0.75)
#   CUDA_DEVICE_MAX_CONNECTIONS=1   one hardware queue, so kernels start in the order XLA's
#                                   latency-hiding schedule chose (recommended on Hopper/H100)
# No NCCL_* variable is set: the right ones (NCCL_IB_HCA, NCCL_SOCKET_IFNAME, ...) depend on the
# cluster's network; pass them with --env KEY=VALUE.

DEFAULT_COMBINE_THRESHOLD_BYTES=1073741824
DEFAULT_MEM_FRACTION=0.90

GIN_FILES=() GIN_BINDINGS=() TRAIN_ENV=() EXTRA_XLA_FLAGS=()
MODEL_DIR="" VENV_PATH="" WORKDIR=""
COMBINE_THRESHOLD_BYTES="$DEFAULT_COMBINE_THRESHOLD_BYTES" MEM_FRACTION="$DEFAULT_MEM_FRACTION"

# The --help text of the options parse_training_option understands.
TRAINING_OPTIONS_HELP='Training options (shared by gpu/single_node.sh and gpu/slurm_launch.sh):
  --gin_file FILE            gin file relative to --workdir (repeatable; required)
  --model_dir DIR            checkpoints + metrics (required)
  --gin.KEY=VALUE            extra gin binding passed through verbatim (repeatable), e.g.
                             --gin.TRAIN_STEPS=1000 --gin.MESH_FSDP=16
  --workdir DIR              directory the trainer runs in (default: this repository)
  --venv DIR                 use DIR/bin/alexatm-train (default: alexatm-train on PATH)
  --env KEY=VALUE            extra environment variable (repeatable), e.g. --env NCCL_DEBUG=INFO
  --xla_flags=FLAGS          more XLA flags, appended after the defaults (later ones win)
  --combine_threshold_bytes N  all-reduce/all-gather/reduce-scatter combine threshold
                             (default: 1073741824)
  --mem_fraction F           XLA_PYTHON_CLIENT_MEM_FRACTION (default: 0.90)'

# parse_training_option "$@": consume $1 (and its value) when it is a shared training option;
# sets SHIFT_BY. Returns 1, consuming nothing, for any other argument.
parse_training_option() {
  case "$1" in
    --gin_file | --gin_file=*) take_value "$@"; GIN_FILES+=("$REPLY") ;;
    --model_dir | --model_dir=*) take_value "$@"; MODEL_DIR="$REPLY" ;;
    --gin.MODEL_DIR=*) die "pass the model directory as --model_dir DIR (it is validated and quoted for gin)" ;;
    --gin.*=*) GIN_BINDINGS+=("$1"); SHIFT_BY=1 ;;
    --workdir | --workdir=*) take_value "$@"; WORKDIR="$REPLY" ;;
    --venv | --venv=*) take_value "$@"; VENV_PATH="$REPLY" ;;
    --env | --env=*) take_value "$@"; TRAIN_ENV+=("$REPLY") ;;
    --xla_flags | --xla_flags=*) take_value "$@"; EXTRA_XLA_FLAGS+=("$REPLY") ;;
    --combine_threshold_bytes | --combine_threshold_bytes=*) take_value "$@"; COMBINE_THRESHOLD_BYTES="$REPLY" ;;
    --mem_fraction | --mem_fraction=*) take_value "$@"; MEM_FRACTION="$REPLY" ;;
    *) return 1 ;;
  esac
}

# validate_training_options: die with a clear message on a missing or malformed training option;
# makes WORKDIR absolute.
validate_training_options() {
  local gin_file assignment
  ((${#GIN_FILES[@]})) || die "missing required flag --gin_file (e.g. --gin_file gin/experiments/alexatm_20b_h100_16x8.gin)"
  require_flag "$MODEL_DIR" --model_dir
  [[ "$MODEL_DIR" != *"'"* ]] || die "--model_dir must not contain a single quote"
  for gin_file in "${GIN_FILES[@]}"; do
    [[ "$gin_file" == *.gin ]] || die "--gin_file '${gin_file}' is not a .gin file"
  done
  for assignment in ${TRAIN_ENV[@]+"${TRAIN_ENV[@]}"}; do
    [[ "$assignment" =~ ^[A-Za-z_][A-Za-z0-9_]*=.*$ ]] || die "--env '${assignment}' must look like KEY=VALUE"
  done
  require_positive_int "$COMBINE_THRESHOLD_BYTES" --combine_threshold_bytes
  [[ "$MEM_FRACTION" =~ ^(0?\.[0-9]+|1(\.0*)?)$ ]] || die "--mem_fraction must be a number in (0, 1], got '${MEM_FRACTION}'"
  if [[ -n "$VENV_PATH" ]]; then
    if [[ -d "$VENV_PATH" ]]; then
      VENV_PATH="$(cd "$VENV_PATH" && pwd)"
    elif ((!DRY_RUN)) || [[ "$VENV_PATH" != /* ]]; then
      die "--venv '${VENV_PATH}' is not a directory (a dry run accepts an absolute path that exists elsewhere)"
    fi
  fi
  WORKDIR="${WORKDIR:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)}"
  [[ -d "$WORKDIR" ]] || die "--workdir '${WORKDIR}' is not a directory"
  WORKDIR="$(cd "$WORKDIR" && pwd)"
}

# gpu_xla_flags: the XLA_FLAGS value (defaults above, then --xla_flags).
gpu_xla_flags() {
  local flags=(
    --xla_gpu_enable_latency_hiding_scheduler=true
    --xla_gpu_enable_triton_gemm=false
    --xla_gpu_enable_while_loop_double_buffering=true
    --xla_gpu_enable_pipelined_all_gather=true
    --xla_gpu_enable_pipelined_reduce_scatter=true
    --xla_gpu_enable_pipelined_all_reduce=true
    "--xla_gpu_all_reduce_combine_threshold_bytes=$COMBINE_THRESHOLD_BYTES"
    "--xla_gpu_all_gather_combine_threshold_bytes=$COMBINE_THRESHOLD_BYTES"
    "--xla_gpu_reduce_scatter_combine_threshold_bytes=$COMBINE_THRESHOLD_BYTES"
    --xla_gpu_enable_all_gather_combine_by_dim=false
    --xla_gpu_enable_reduce_scatter_combine_by_dim=false
  )
  printf '%s' "${flags[*]}${EXTRA_XLA_FLAGS[*]+ ${EXTRA_XLA_FLAGS[*]}}"
}

# gpu_env_assignments: sets GPU_ENV=(KEY=VALUE ...) for the trainer process (defaults, then --env).
gpu_env_assignments() {
  GPU_ENV=(
    "XLA_FLAGS=$(gpu_xla_flags)"
    "XLA_PYTHON_CLIENT_MEM_FRACTION=$MEM_FRACTION"
    "CUDA_DEVICE_MAX_CONNECTIONS=1"
    ${TRAIN_ENV[@]+"${TRAIN_ENV[@]}"}
  )
}

# trainer_command: sets TRAINER_CMD=(alexatm-train --gin_file=... --gin.MODEL_DIR='...' ...).
trainer_command() {
  local gin_file
  TRAINER_CMD=("${VENV_PATH:+$VENV_PATH/bin/}alexatm-train")
  for gin_file in "${GIN_FILES[@]}"; do
    TRAINER_CMD+=("--gin_file=$gin_file")
  done
  TRAINER_CMD+=("--gin.MODEL_DIR='$MODEL_DIR'" ${GIN_BINDINGS[@]+"${GIN_BINDINGS[@]}"})
}

#!/usr/bin/env bash
# Start alexatm-train on every worker of a TPU slice, detached from ssh, one log per worker.
# shellcheck source=tpu_scripts/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
  cat <<'EOF'
Usage: launch.sh --name NAME --zone ZONE --gin_file FILE [--gin_file FILE...] --model_dir DIR
                 [--gin.KEY=VALUE...] [options]

Runs, on every worker at once (gcloud compute tpus tpu-vm ssh NAME --worker=all):
  alexatm-train --gin_file=FILE... --gin.MODEL_DIR='DIR' --gin.KEY=VALUE...
from the code directory (so gin paths are relative to the repository), detached with
setsid + nohup (an ssh disconnect does not stop it), appending stdout+stderr to
~/alexatm-logs/RUN_NAME.log on each worker and writing the trainer's pid to
~/alexatm-logs/RUN_NAME.pid (stop.sh sends SIGTERM to that pid). JAX finds the other hosts of
the slice by itself (jax.distributed.initialize() auto-detects Cloud TPU). Refuses to start
when RUN_NAME is already running on a worker.

Required:
  --name NAME              TPU (or queued-resource node) name
  --zone ZONE              its zone
  --gin_file FILE          gin file, relative to the repository (repeatable; later files
                           override earlier ones), e.g. gin/experiments/alexatm_20b_v5p256.gin
  --model_dir DIR          checkpoints + metrics; must be gs://BUCKET/PATH on a multi-host
                           slice (every host writes its shards to the same place); a local
                           path is accepted only with --accelerator_type of a 1-host slice

Options:
  --gin.KEY=VALUE          extra gin binding passed through verbatim (repeatable), e.g.
                           --gin.TRAIN_STEPS=10000 --gin.BATCH_SIZE=2048 --gin.MESH_FSDP=128
                           (string values need gin quotes: --gin.X="'text'")
  --run_name NAME          names the log/pid files (default: alexatm)
  --accelerator_type TYPE  the slice type; only used to allow a local --model_dir on 1 host
  --env KEY=VALUE          environment variable for the trainer (repeatable), e.g.
                           --env LIBTPU_INIT_ARGS=--xla_tpu_... or --env JAX_LOG_COMPILES=1
  --project PROJECT        Google Cloud project (default: gcloud's configured project)
  --remote_dir DIR         code directory on the workers (default: alexatm-jax)
  --venv DIR               venv directory on the workers (default: alexatm-venv)
  --skip_bucket_check      do not check that the gs:// bucket exists before launching
  --startup_wait SECONDS   how long each worker waits to see that the trainer did not exit
                           at once (bad flags, missing gin file); then it prints the log's end
                           (default: 15)
  --dry-run                print the exact commands; run nothing (gcloud not needed)
  -h, --help               this help

Example (v5p-256):
  tpu_scripts/launch.sh --name alexatm-v5p --zone us-east5-a \
      --gin_file gin/experiments/alexatm_20b_v5p256.gin \
      --model_dir gs://my-bucket/alexatm-20b/v5p256-run1 --gin.TRAIN_STEPS=500000
EOF
}

NAME="" ZONE="" PROJECT="" MODEL_DIR="" RUN_NAME="$DEFAULT_RUN_NAME" ACCELERATOR_TYPE=""
REMOTE_DIR="$DEFAULT_REMOTE_REPO_DIR" VENV_DIR="$DEFAULT_REMOTE_VENV_DIR" CHECK_BUCKET=1 STARTUP_WAIT=15
GIN_FILES=() GIN_BINDINGS=() TRAIN_ENV=()

while (($#)); do
  case "$1" in
    -h | --help) usage; exit 0 ;;
    --dry-run | --dry_run) DRY_RUN=1; shift ;;
    --name | --name=*) take_value "$@"; NAME="$REPLY"; shift "$SHIFT_BY" ;;
    --zone | --zone=*) take_value "$@"; ZONE="$REPLY"; shift "$SHIFT_BY" ;;
    --project | --project=*) take_value "$@"; PROJECT="$REPLY"; shift "$SHIFT_BY" ;;
    --gin_file | --gin_file=*) take_value "$@"; GIN_FILES+=("$REPLY"); shift "$SHIFT_BY" ;;
    --model_dir | --model_dir=*) take_value "$@"; MODEL_DIR="$REPLY"; shift "$SHIFT_BY" ;;
    --run_name | --run_name=*) take_value "$@"; RUN_NAME="$REPLY"; shift "$SHIFT_BY" ;;
    --accelerator_type | --accelerator_type=*) take_value "$@"; ACCELERATOR_TYPE="$REPLY"; shift "$SHIFT_BY" ;;
    --env | --env=*) take_value "$@"; TRAIN_ENV+=("$REPLY"); shift "$SHIFT_BY" ;;
    --remote_dir | --remote_dir=*) take_value "$@"; REMOTE_DIR="$REPLY"; shift "$SHIFT_BY" ;;
    --venv | --venv=*) take_value "$@"; VENV_DIR="$REPLY"; shift "$SHIFT_BY" ;;
    --skip_bucket_check) CHECK_BUCKET=0; shift ;;
    --startup_wait | --startup_wait=*) take_value "$@"; STARTUP_WAIT="$REPLY"; shift "$SHIFT_BY" ;;
    --gin.MODEL_DIR=*) die "pass the model directory as --model_dir DIR (it is validated and quoted for gin)" ;;
    --gin.*=*) GIN_BINDINGS+=("$1"); shift ;;
    *) die "unknown argument '$1'" ;;
  esac
done

require_flag "$NAME" --name
require_flag "$ZONE" --zone
((${#GIN_FILES[@]})) || die "missing required flag --gin_file (e.g. --gin_file gin/experiments/alexatm_20b_v5p256.gin)"
require_flag "$MODEL_DIR" --model_dir "gs://BUCKET/PATH"
validate_name "$NAME" --name
validate_name "$RUN_NAME" --run_name
validate_remote_dir "$REMOTE_DIR" --remote_dir
validate_remote_dir "$VENV_DIR" --venv
require_positive_int "$STARTUP_WAIT" --startup_wait
for gin_file in "${GIN_FILES[@]}"; do
  [[ "$gin_file" =~ ^[A-Za-z0-9_][A-Za-z0-9._/-]*\.gin$ && "$gin_file" != *..* ]] ||
    die "--gin_file '${gin_file}' must be a .gin file relative to the repository (e.g. gin/experiments/X.gin)"
done
for assignment in ${TRAIN_ENV[@]+"${TRAIN_ENV[@]}"}; do
  [[ "$assignment" =~ ^[A-Za-z_][A-Za-z0-9_]*=.*$ ]] || die "--env '${assignment}' must look like KEY=VALUE"
done
[[ "$MODEL_DIR" != *"'"* ]] || die "--model_dir must not contain a single quote"
SINGLE_HOST=0
if [[ -n "$ACCELERATOR_TYPE" ]]; then
  validate_accelerator_type "$ACCELERATOR_TYPE"
  (($(hosts_for_accelerator "$ACCELERATOR_TYPE") == 1)) && SINGLE_HOST=1
fi
if [[ "$MODEL_DIR" != gs://?* ]] && ((!SINGLE_HOST)); then
  die "--model_dir must be a gs://BUCKET/PATH on a multi-host slice (every worker writes the same checkpoint), got '${MODEL_DIR}'; a local path is only allowed with --accelerator_type of a single-host slice (e.g. v4-8)"
fi
require_tool gcloud

gcloud_scope_flags "$ZONE" "$PROJECT"
REPO="$(remote_path "$REMOTE_DIR")"
VENV="$(remote_path "$VENV_DIR")"
LOGS="$(remote_path "$DEFAULT_REMOTE_LOG_DIR")"
LOG_FILE="$LOGS/$RUN_NAME.log"
PID_FILE="$LOGS/$RUN_NAME.pid"

TRAIN_ARGS=()
for gin_file in "${GIN_FILES[@]}"; do
  TRAIN_ARGS+=("--gin_file=$gin_file")
done
TRAIN_ARGS+=("--gin.MODEL_DIR='$MODEL_DIR'" ${GIN_BINDINGS[@]+"${GIN_BINDINGS[@]}"})
TRAIN_CMD=(nohup)
if ((${#TRAIN_ENV[@]})); then
  TRAIN_CMD+=(env "${TRAIN_ENV[@]}")
fi
# setsid puts the trainer in its own session (an ssh disconnect cannot signal it); it execs in
# place (a background job of a shell without job control is no process-group leader), as do
# nohup and env, so $! is the trainer's own pid.
LAUNCH="setsid $(quote_args "${TRAIN_CMD[@]}") $VENV/bin/alexatm-train $(quote_args "${TRAIN_ARGS[@]}") >> $LOG_FILE 2>&1 < /dev/null & echo \$! > $PID_FILE"

STEPS=(
  "set -euo pipefail +m"
  "cd $REPO"
)
for gin_file in "${GIN_FILES[@]}"; do
  STEPS+=("[ -f $(shell_quote "$gin_file") ] || { echo \"\$(hostname): gin file $gin_file not found in $REMOTE_DIR (run setup.sh again?)\" >&2; exit 1; }")
done
STEPS+=(
  "[ -x $VENV/bin/alexatm-train ] || { echo \"\$(hostname): $VENV_DIR/bin/alexatm-train missing (run setup.sh)\" >&2; exit 1; }"
  "mkdir -p $LOGS"
  "$REMOTE_ALIVE_FN"
  "if [ -f $PID_FILE ] && alive \"\$(cat $PID_FILE)\"; then echo \"\$(hostname): $RUN_NAME already running as pid \$(cat $PID_FILE); stop it first (stop.sh)\" >&2; exit 1; fi"
  "rm -f $PID_FILE"
  "echo \"=== \$(date -u +%Y-%m-%dT%H:%M:%SZ) launch $RUN_NAME on \$(hostname) ===\" >> $LOG_FILE"
  "$LAUNCH"
  "sleep $STARTUP_WAIT"
  "alive \"\$(cat $PID_FILE)\" || { echo \"\$(hostname): the trainer exited within ${STARTUP_WAIT}s; end of ~/$DEFAULT_REMOTE_LOG_DIR/$RUN_NAME.log:\" >&2; tail -n 30 $LOG_FILE >&2; exit 1; }"
  "echo \"\$(hostname): started $RUN_NAME as pid \$(cat $PID_FILE), log ~/$DEFAULT_REMOTE_LOG_DIR/$RUN_NAME.log\""
)

if [[ "$MODEL_DIR" == gs://* ]] && ((CHECK_BUCKET)); then
  BUCKET="${MODEL_DIR#gs://}"
  BUCKET="gs://${BUCKET%%/*}"
  note "check that the checkpoint bucket exists before starting all hosts"
  run gcloud storage buckets describe "$BUCKET" '--format=value(name)' ${PROJECT:+"--project=$PROJECT"}
fi
show_remote_script "every worker" "${STEPS[@]}"
run gcloud compute tpus tpu-vm ssh "$NAME" "${GCLOUD_SCOPE[@]}" --worker=all \
  "--command=$(join_statements "${STEPS[@]}")"
note "logs: tpu_scripts/logs.sh --name $NAME --zone $ZONE --run_name $RUN_NAME [--follow]"
note "stop (SIGTERM -> the trainer checkpoints and exits): tpu_scripts/stop.sh --name $NAME --zone $ZONE --run_name $RUN_NAME"

#!/usr/bin/env bash
# Show, follow or fetch the per-worker training logs written by launch.sh.
# shellcheck source=tpu_scripts/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
  cat <<'EOF'
Usage: logs.sh --name NAME --zone ZONE [--lines N | --follow | --fetch_to DIR] [options]

Each worker keeps its own log, ~/alexatm-logs/RUN_NAME.log (launch.sh appends to it). Modes:
  (default)        the last --lines lines of every worker's log, each line prefixed with
                   the worker's hostname
  --follow         stream one worker's log (tail -F; Ctrl-C stops watching, not training)
  --fetch_to DIR   copy every worker's log to DIR/worker-<i>.log (one scp per worker)

Required:
  --name NAME              TPU (or queued-resource node) name
  --zone ZONE              its zone

Options:
  --run_name NAME          the run given to launch.sh (default: alexatm)
  --lines N                lines per worker in the default mode (default: 40)
  --worker W               which worker(s): default all (tail), 0 (--follow)
  --num_workers N          workers to fetch from with --fetch_to; or give
  --accelerator_type TYPE  and it is derived (v4-512 -> 64, v5p-256 -> 32)
  --project PROJECT        Google Cloud project (default: gcloud's configured project)
  --dry-run                print the exact commands; run nothing (gcloud not needed)
  -h, --help               this help

Examples:
  tpu_scripts/logs.sh --name alexatm-v5p --zone us-east5-a --lines 5
  tpu_scripts/logs.sh --name alexatm-v5p --zone us-east5-a --follow
  tpu_scripts/logs.sh --name alexatm-v5p --zone us-east5-a --fetch_to logs/v5p --accelerator_type v5p-256
EOF
}

NAME="" ZONE="" PROJECT="" RUN_NAME="$DEFAULT_RUN_NAME" LINES=40 FOLLOW=0 FETCH_TO="" WORKER=""
NUM_WORKERS="" ACCELERATOR_TYPE=""

while (($#)); do
  case "$1" in
    -h | --help) usage; exit 0 ;;
    --dry-run | --dry_run) DRY_RUN=1; shift ;;
    --name | --name=*) take_value "$@"; NAME="$REPLY"; shift "$SHIFT_BY" ;;
    --zone | --zone=*) take_value "$@"; ZONE="$REPLY"; shift "$SHIFT_BY" ;;
    --project | --project=*) take_value "$@"; PROJECT="$REPLY"; shift "$SHIFT_BY" ;;
    --run_name | --run_name=*) take_value "$@"; RUN_NAME="$REPLY"; shift "$SHIFT_BY" ;;
    --lines | --lines=*) take_value "$@"; LINES="$REPLY"; shift "$SHIFT_BY" ;;
    --follow) FOLLOW=1; shift ;;
    --fetch_to | --fetch_to=*) take_value "$@"; FETCH_TO="$REPLY"; shift "$SHIFT_BY" ;;
    --worker | --worker=*) take_value "$@"; WORKER="$REPLY"; shift "$SHIFT_BY" ;;
    --num_workers | --num_workers=*) take_value "$@"; NUM_WORKERS="$REPLY"; shift "$SHIFT_BY" ;;
    --accelerator_type | --accelerator_type=*) take_value "$@"; ACCELERATOR_TYPE="$REPLY"; shift "$SHIFT_BY" ;;
    *) die "unknown argument '$1'" ;;
  esac
done

require_flag "$NAME" --name
require_flag "$ZONE" --zone
validate_name "$NAME" --name
validate_name "$RUN_NAME" --run_name
require_positive_int "$LINES" --lines
((FOLLOW == 0 || ${#FETCH_TO} == 0)) || die "choose one of --follow and --fetch_to"
if [[ -n "$WORKER" ]]; then
  [[ "$WORKER" == all || "$WORKER" =~ ^[0-9]+$ ]] || die "--worker must be 'all' or a worker index, got '${WORKER}'"
  [[ -z "$FETCH_TO" ]] || die "--worker does not apply to --fetch_to (it fetches every worker)"
  if ((FOLLOW)) && [[ "$WORKER" == all ]]; then
    die "--follow streams one worker: give --worker INDEX"
  fi
fi
if [[ -n "$FETCH_TO" ]]; then
  if [[ -z "$NUM_WORKERS" && -n "$ACCELERATOR_TYPE" ]]; then
    validate_accelerator_type "$ACCELERATOR_TYPE"
    NUM_WORKERS="$(hosts_for_accelerator "$ACCELERATOR_TYPE")"
  fi
  require_flag "$NUM_WORKERS" "--num_workers or --accelerator_type" "how many workers to fetch from"
  require_positive_int "$NUM_WORKERS" --num_workers
fi
require_tool gcloud

gcloud_scope_flags "$ZONE" "$PROJECT"
REMOTE_LOG="$DEFAULT_REMOTE_LOG_DIR/$RUN_NAME.log"
LOG_FILE="$(remote_path "$DEFAULT_REMOTE_LOG_DIR")/$RUN_NAME.log"
MISSING="echo \"\$(hostname): no log ~/$REMOTE_LOG yet\""

if [[ -n "$FETCH_TO" ]]; then
  run mkdir -p "$FETCH_TO"
  for ((worker = 0; worker < NUM_WORKERS; worker++)); do
    run gcloud compute tpus tpu-vm scp "$NAME:$REMOTE_LOG" "$FETCH_TO/worker-$worker.log" \
      "${GCLOUD_SCOPE[@]}" "--worker=$worker"
  done
  note "fetched ${NUM_WORKERS} worker log(s) into ${FETCH_TO}"
elif ((FOLLOW)); then
  run gcloud compute tpus tpu-vm ssh "$NAME" "${GCLOUD_SCOPE[@]}" "--worker=${WORKER:-0}" \
    "--command=if [ -f $LOG_FILE ]; then exec tail -n $LINES -F $LOG_FILE; else $MISSING; fi"
else
  run gcloud compute tpus tpu-vm ssh "$NAME" "${GCLOUD_SCOPE[@]}" "--worker=${WORKER:-all}" \
    "--command=if [ -f $LOG_FILE ]; then tail -n $LINES $LOG_FILE | sed \"s/^/\$(hostname): /\"; else $MISSING; fi"
fi

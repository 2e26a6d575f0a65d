#!/usr/bin/env bash
# Stop alexatm-train on every worker gracefully: SIGTERM (the trainer saves a checkpoint), then wait.
# shellcheck source=tpu_scripts/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
  cat <<'EOF'
Usage: stop.sh --name NAME --zone ZONE [options]

On every worker at once, sends SIGTERM to the trainer whose pid launch.sh recorded in
~/alexatm-logs/RUN_NAME.pid, then waits until it has exited. On SIGTERM alexatm-train finishes
the current step, agrees with the other hosts on the stop step, writes a checkpoint to
MODEL_DIR and exits 0; saving a 20B model to GCS takes minutes, hence the long default wait.
A worker whose trainer is still running after --timeout seconds reports it and the script
exits non-zero, unless --force, which then sends SIGKILL (the checkpoint is then lost).

Required:
  --name NAME          TPU (or queued-resource node) name
  --zone ZONE          its zone

Options:
  --run_name NAME      the run given to launch.sh (default: alexatm)
  --timeout SECONDS    how long each worker waits for the trainer to exit (default: 900)
  --force              SIGKILL a trainer that is still running after --timeout
  --project PROJECT    Google Cloud project (default: gcloud's configured project)
  --dry-run            print the exact command; run nothing (gcloud not needed)
  -h, --help           this help

Example:
  tpu_scripts/stop.sh --name alexatm-v5p --zone us-east5-a --timeout 1200
EOF
}

NAME="" ZONE="" PROJECT="" RUN_NAME="$DEFAULT_RUN_NAME" TIMEOUT=900 FORCE=0

while (($#)); do
  case "$1" in
    -h | --help) usage; exit 0 ;;
    --dry-run | --dry_run) DRY_RUN=1; shift ;;
    --name | --name=*) take_value "$@"; NAME="$REPLY"; shift "$SHIFT_BY" ;;
    --zone | --zone=*) take_value "$@"; ZONE="$REPLY"; shift "$SHIFT_BY" ;;
    --project | --project=*) take_value "$@"; PROJECT="$REPLY"; shift "$SHIFT_BY" ;;
    --run_name | --run_name=*) take_value "$@"; RUN_NAME="$REPLY"; shift "$SHIFT_BY" ;;
    --timeout | --timeout=*) take_value "$@"; TIMEOUT="$REPLY"; shift "$SHIFT_BY" ;;
    --force) FORCE=1; shift ;;
    *) die "unknown argument '$1'" ;;
  esac
done

require_flag "$NAME" --name
require_flag "$ZONE" --zone
validate_name "$NAME" --name
validate_name "$RUN_NAME" --run_name
require_positive_int "$TIMEOUT" --timeout
require_tool gcloud

gcloud_scope_flags "$ZONE" "$PROJECT"
PID_FILE="$(remote_path "$DEFAULT_REMOTE_LOG_DIR")/$RUN_NAME.pid"
if ((FORCE)); then
  ON_TIMEOUT="echo \"\$(hostname): still running after ${TIMEOUT}s, sending SIGKILL (no checkpoint)\" >&2; kill -KILL \"\$pid\" 2>/dev/null || true; rm -f $PID_FILE; exit 1"
else
  ON_TIMEOUT="echo \"\$(hostname): pid \$pid still running after ${TIMEOUT}s (still saving?); rerun stop.sh, or add --force to SIGKILL it\" >&2; exit 1"
fi
STEPS=(
  "set -euo pipefail"
  "$REMOTE_ALIVE_FN"
  "if [ ! -f $PID_FILE ]; then echo \"\$(hostname): no $RUN_NAME pid file, nothing to stop\"; exit 0; fi"
  "pid=\$(cat $PID_FILE)"
  "if ! alive \"\$pid\"; then echo \"\$(hostname): $RUN_NAME (pid \$pid) is not running\"; rm -f $PID_FILE; exit 0; fi"
  "kill -TERM \"\$pid\" 2>/dev/null || true"
  "echo \"\$(hostname): sent SIGTERM to $RUN_NAME (pid \$pid), waiting up to ${TIMEOUT}s for its checkpoint\""
  "waited=0"
  "while alive \"\$pid\"; do if [ \"\$waited\" -ge $TIMEOUT ]; then $ON_TIMEOUT; fi; sleep 1; waited=\$((waited + 1)); done"
  "rm -f $PID_FILE"
  "echo \"\$(hostname): $RUN_NAME stopped after \${waited}s\""
)

show_remote_script "every worker" "${STEPS[@]}"
run gcloud compute tpus tpu-vm ssh "$NAME" "${GCLOUD_SCOPE[@]}" --worker=all \
  "--command=$(join_statements "${STEPS[@]}")"

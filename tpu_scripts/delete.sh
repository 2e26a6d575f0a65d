#!/usr/bin/env bash
# Delete a TPU VM slice or a queued resource (and its node). Asks for confirmation unless --yes.
# shellcheck source=tpu_scripts/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
  cat <<'EOF'
Usage: delete.sh --name NAME --zone ZONE [--queued] [--yes] [options]

Deletes the TPU VM NAME (gcloud compute tpus tpu-vm delete) or, with --queued, the queued
resource NAME together with its node (gcloud compute tpus queued-resources delete --force).
Everything on the workers' disks (code, venv, local logs) is lost; checkpoints in gs:// stay.
Stop training first (stop.sh) so that the last checkpoint is written.
Unless --yes, it asks you to type NAME to confirm (and refuses without a terminal).

Required:
  --name NAME          TPU or queued-resource name
  --zone ZONE          its zone

Options:
  --queued             NAME is a queued resource (created with create.sh --queued)
  --yes                do not ask for confirmation
  --async              return without waiting for the deletion to finish
  --project PROJECT    Google Cloud project (default: gcloud's configured project)
  --dry-run            print the exact command; run nothing (gcloud not needed, no prompt)
  -h, --help           this help

Example:
  tpu_scripts/delete.sh --name alexatm-v5p --zone us-east5-a --queued
EOF
}

NAME="" ZONE="" PROJECT="" QUEUED=0 YES=0 ASYNC=0

while (($#)); do
  case "$1" in
    -h | --help) usage; exit 0 ;;
    --dry-run | --dry_run) DRY_RUN=1; shift ;;
    --name | --name=*) take_value "$@"; NAME="$REPLY"; shift "$SHIFT_BY" ;;
    --zone | --zone=*) take_value "$@"; ZONE="$REPLY"; shift "$SHIFT_BY" ;;
    --project | --project=*) take_value "$@"; PROJECT="$REPLY"; shift "$SHIFT_BY" ;;
    --queued) QUEUED=1; shift ;;
    --yes) YES=1; shift ;;
    --async) ASYNC=1; shift ;;
    *) die "unknown argument '$1'" ;;
  esac
done

require_flag "$NAME" --name
require_flag "$ZONE" --zone
validate_name "$NAME" --name
require_tool gcloud

gcloud_scope_flags "$ZONE" "$PROJECT"
if ((QUEUED)); then
  KIND="queued resource"
  COMMAND=(gcloud compute tpus queued-resources delete "$NAME" "${GCLOUD_SCOPE[@]}" --force --quiet)
else
  KIND="TPU VM"
  COMMAND=(gcloud compute tpus tpu-vm delete "$NAME" "${GCLOUD_SCOPE[@]}" --quiet)
fi
((ASYNC)) && COMMAND+=(--async)

if ((!DRY_RUN && !YES)); then
  [[ -t 0 ]] || die "refusing to delete ${KIND} ${NAME} without confirmation: no terminal to ask on; pass --yes"
  read -r -p "Delete ${KIND} '${NAME}' in ${ZONE}? Type its name to confirm: " ANSWER
  [[ "$ANSWER" == "$NAME" ]] || { echo "not confirmed; nothing deleted" >&2; exit 1; }
fi
note "delete ${KIND} ${NAME} (worker disks are lost; gs:// checkpoints stay)"
run "${COMMAND[@]}"

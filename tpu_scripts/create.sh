#!/usr/bin/env bash
# Create a Cloud TPU VM slice (or a queued resource that becomes one) for alexatm-jax.
# shellcheck source=tpu_scripts/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
  cat <<'EOF'
Usage: create.sh --name NAME --zone ZONE --project PROJECT --accelerator_type TYPE [options]

Create a TPU VM slice with `gcloud compute tpus tpu-vm create`, or, with --queued, a queued
resource with `gcloud compute tpus queued-resources create` whose single node is also named NAME
(so setup.sh / launch.sh / logs.sh / stop.sh address it with the same --name).

Required:
  --name NAME               TPU name (lowercase letters, digits, hyphens)
  --zone ZONE               e.g. us-east5-a (v5p), us-central2-b (v4)
  --project PROJECT         Google Cloud project id
  --accelerator_type TYPE   v4-8 .. v4-4096, v5p-8 .. v5p-12288 (TensorCores, 2 per chip),
                            v5litepod-1 .. v5litepod-256 (chips)

Options:
  --runtime_version V       TPU software version. Default per generation (the Cloud TPU
                            recommendation for JAX): v4 -> tpu-ubuntu2204-base,
                            v5p -> v2-alpha-tpuv5, v5litepod -> v2-alpha-tpuv5-lite
  --queued                  request a queued resource (waits in the queue for capacity;
                            recommended for large slices such as v5p-256 and v4-512)
  --spot                    Spot capacity (preemptible at any time; cheaper)
  --preemptible             legacy preemptible TPU VM (not accepted with --queued: use --spot)
  --reserved                use the project's reserved capacity
  --network NETWORK         VPC network (gcloud default: "default")
  --subnetwork SUBNETWORK   VPC subnetwork
  --valid_until_duration D  with --queued: give up if not provisioned within D (e.g. 6h, 2d)
  --dry-run                 print the exact gcloud command; run nothing (gcloud not needed)
  -h, --help                this help

Example (v5p-256 = 128 chips = 32 hosts, queued on Spot capacity):
  tpu_scripts/create.sh --name alexatm-v5p --zone us-east5-a --project my-proj \
      --accelerator_type v5p-256 --queued --spot
EOF
}

NAME="" ZONE="" PROJECT="" ACCELERATOR_TYPE="" RUNTIME_VERSION="" QUEUED=0 SPOT=0 PREEMPTIBLE=0
RESERVED=0 NETWORK="" SUBNETWORK="" VALID_UNTIL=""

while (($#)); do
  case "$1" in
    -h | --help) usage; exit 0 ;;
    --dry-run | --dry_run) DRY_RUN=1; shift ;;
    --name | --name=*) take_value "$@"; NAME="$REPLY"; shift "$SHIFT_BY" ;;
    --zone | --zone=*) take_value "$@"; ZONE="$REPLY"; shift "$SHIFT_BY" ;;
    --project | --project=*) take_value "$@"; PROJECT="$REPLY"; shift "$SHIFT_BY" ;;
    --accelerator_type | --accelerator_type=*) take_value "$@"; ACCELERATOR_TYPE="$REPLY"; shift "$SHIFT_BY" ;;
    --runtime_version | --runtime_version=*) take_value "$@"; RUNTIME_VERSION="$REPLY"; shift "$SHIFT_BY" ;;
    --queued) QUEUED=1; shift ;;
    --spot) SPOT=1; shift ;;
    --preemptible) PREEMPTIBLE=1; shift ;;
    --reserved) RESERVED=1; shift ;;
    --network | --network=*) take_value "$@"; NETWORK="$REPLY"; shift "$SHIFT_BY" ;;
    --subnetwork | --subnetwork=*) take_value "$@"; SUBNETWORK="$REPLY"; shift "$SHIFT_BY" ;;
    --valid_until_duration | --valid_until_duration=*) take_value "$@"; VALID_UNTIL="$REPLY"; shift "$SHIFT_BY" ;;
    *) die "unknown argument '$1'" ;;
  esac
done

require_flag "$NAME" --name
require_flag "$ZONE" --zone
require_flag "$PROJECT" --project
require_flag "$ACCELERATOR_TYPE" --accelerator_type "e.g. v5p-256 or v4-512"
validate_name "$NAME" --name
validate_accelerator_type "$ACCELERATOR_TYPE"
((SPOT + PREEMPTIBLE + RESERVED <= 1)) || die "choose at most one of --spot, --preemptible and --reserved"
if ((QUEUED && PREEMPTIBLE)); then
  die "--preemptible is not a queued-resources option; use --spot with --queued"
fi
if [[ -n "$VALID_UNTIL" ]] && ((!QUEUED)); then
  die "--valid_until_duration only applies to --queued requests"
fi
RUNTIME_VERSION="${RUNTIME_VERSION:-$(default_runtime_version "$ACCELERATOR_TYPE")}"
require_tool gcloud

HOSTS="$(hosts_for_accelerator "$ACCELERATOR_TYPE")"
gcloud_scope_flags "$ZONE" "$PROJECT"
OPTIONAL_FLAGS=()
((SPOT)) && OPTIONAL_FLAGS+=(--spot)
((PREEMPTIBLE)) && OPTIONAL_FLAGS+=(--preemptible)
((RESERVED)) && OPTIONAL_FLAGS+=(--reserved)
[[ -n "$NETWORK" ]] && OPTIONAL_FLAGS+=("--network=$NETWORK")
[[ -n "$SUBNETWORK" ]] && OPTIONAL_FLAGS+=("--subnetwork=$SUBNETWORK")
[[ -n "$VALID_UNTIL" ]] && OPTIONAL_FLAGS+=("--valid-until-duration=$VALID_UNTIL")

note "${ACCELERATOR_TYPE}: ${HOSTS} host(s), workers 0..$((HOSTS - 1)); runtime ${RUNTIME_VERSION}"
if ((QUEUED)); then
  run gcloud compute tpus queued-resources create "$NAME" "${GCLOUD_SCOPE[@]}" \
    "--node-id=$NAME" "--accelerator-type=$ACCELERATOR_TYPE" "--runtime-version=$RUNTIME_VERSION" \
    ${OPTIONAL_FLAGS[@]+"${OPTIONAL_FLAGS[@]}"}
  note "the request is queued; it is usable once its state is ACTIVE:"
  note "  gcloud compute tpus queued-resources describe $NAME ${GCLOUD_SCOPE[*]} --format='value(state.state)'"
else
  run gcloud compute tpus tpu-vm create "$NAME" "${GCLOUD_SCOPE[@]}" \
    "--accelerator-type=$ACCELERATOR_TYPE" "--version=$RUNTIME_VERSION" \
    ${OPTIONAL_FLAGS[@]+"${OPTIONAL_FLAGS[@]}"}
fi
note "next: tpu_scripts/setup.sh --name $NAME --zone $ZONE --project $PROJECT --repo_url URL (or --source_dir DIR)"

#!/usr/bin/env bash
# Write the JobSet manifest of a multi-slice alexatm-train job (gke_jobset.py) and submit it to
# the current kubectl context with kubectl apply.
# shellcheck source=tpu_scripts/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
  cat <<'USAGE'
Usage: gke_launch.sh --name NAME --accelerator_type TYPE --num_slices N --image IMAGE
                     --gin_file FILE [--gin_file FILE...] --model_dir gs://BUCKET/PATH
                     [--gin.KEY=VALUE...] [options]

Runs, on this machine:
  python3 tpu_scripts/gke_jobset.py ARGS... --output MANIFEST   (checks the arguments, writes
                                                                 the JobSet manifest)
  kubectl apply -f MANIFEST                                     (skipped with --dry-run)
One Job per slice (replicatedJobs[0].replicas = N), one pod per TPU host, each running
alexatm-train --gin_file FILE... --model_dir DIR --gin.KEY=VALUE... in IMAGE; the environment
JAX needs across slices (MEGASCALE_*, TPU_WORKER_*) comes from the JobSet's indices. The
cluster needs the JobSet controller and N TPU node pools of TYPE (one slice each).

Arguments of gke_jobset.py (see python3 tpu_scripts/gke_jobset.py --help):
  --name NAME --accelerator_type TYPE --num_slices N --image IMAGE --gin_file FILE
  --model_dir gs://BUCKET/PATH [--namespace NS] [--workdir DIR] [--max_restarts K]
  [--gin.KEY=VALUE...]

Options of this script:
  --manifest FILE   where to write the manifest (default: NAME.jobset.json here)
  --python PYTHON   the Python that runs gke_jobset.py (default: python3)
  --dry-run         write the manifest (a local file, to read), print kubectl apply, run it not
  -h, --help        this help

Example (2 x v5p-256):
  tpu_scripts/gke_launch.sh --name alexatm-20b --accelerator_type v5p-256 --num_slices 2 \
      --image us-docker.pkg.dev/my-proj/alexatm/alexatm-jax:latest \
      --gin_file gin/experiments/alexatm_20b_v5p256.gin \
      --model_dir gs://my-bucket/alexatm-20b/2xv5p256-run1
USAGE
}

MANIFEST="" PYTHON="python3" NAME="" GENERATOR_ARGS=()
while (($#)); do
  case "$1" in
    -h | --help) usage; exit 0 ;;
    --dry-run | --dry_run) DRY_RUN=1; shift ;;
    --manifest | --manifest=*) take_value "$@"; MANIFEST="$REPLY"; shift "$SHIFT_BY" ;;
    --python | --python=*) take_value "$@"; PYTHON="$REPLY"; shift "$SHIFT_BY" ;;
    --output | --output=*) die "use --manifest FILE (where the manifest is written)" ;;
    --name | --name=*) take_value "$@"; NAME="$REPLY"; GENERATOR_ARGS+=(--name "$REPLY"); shift "$SHIFT_BY" ;;
    --gin.*=*) GENERATOR_ARGS+=("$1"); shift ;;
    --*=*) GENERATOR_ARGS+=("$1"); shift ;;
    --*) take_value "$@"; GENERATOR_ARGS+=("$1" "$REPLY"); shift "$SHIFT_BY" ;;
    *) die "unknown argument '$1'" ;;
  esac
done
require_flag "$NAME" --name
MANIFEST="${MANIFEST:-$NAME.jobset.json}"
require_tool kubectl

note "write the JobSet manifest (checks the arguments first)"
printf '+ %s\n' "$(quote_args "$PYTHON" "$(dirname "${BASH_SOURCE[0]}")/gke_jobset.py" "${GENERATOR_ARGS[@]}" --output "$MANIFEST")" >&"$((DRY_RUN ? 1 : 2))"
"$PYTHON" "$(dirname "${BASH_SOURCE[0]}")/gke_jobset.py" "${GENERATOR_ARGS[@]}" --output "$MANIFEST"
note "submit it to the current kubectl context; follow it with kubectl get jobset $NAME"
run kubectl apply -f "$MANIFEST"

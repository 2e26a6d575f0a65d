#!/usr/bin/env bash
# Install alexatm-jax (code + venv + requirements + jax[tpu]) on every worker of a TPU slice.
# shellcheck source=tpu_scripts/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
  cat <<'EOF'
Usage: setup.sh --name NAME --zone ZONE (--repo_url URL | --source_dir DIR) [options]

On every worker (gcloud compute tpus tpu-vm ssh NAME --worker=all) this:
  1. puts the code in ~/alexatm-jax: a shallow `git clone` of --repo_url at --ref, or a tarball
     of the local --source_dir (without .git/.venv/caches) copied with `tpu-vm scp --worker=all`;
  2. installs Python (--python, default python3.11, via apt when missing: the TPU images ship
     Ubuntu 22.04 with Python 3.10 and alexatm-jax needs >= 3.11) and creates ~/alexatm-venv;
  3. pip-installs requirements.txt, then jax[tpu] pinned to the jax version that requirements
     resolved (jax[tpu] pins the matching libtpu), then the package itself (pip install -e).
Re-running it updates the code and the environment in place.

Required:
  --name NAME          TPU (or queued-resource node) name
  --zone ZONE          its zone
  exactly one of:
  --repo_url URL       git URL every worker can reach (e.g. https://github.com/ORG/alexatm-jax)
  --source_dir DIR     a local checkout to copy (e.g. .)

Options:
  --project PROJECT    Google Cloud project (default: gcloud's configured project)
  --ref REF            branch, tag or commit for --repo_url (default: main)
  --python PYTHON      interpreter for the venv on the workers (default: python3.11)
  --remote_dir DIR     code directory on the workers, relative to $HOME (default: alexatm-jax)
  --venv DIR           venv directory on the workers, relative to $HOME (default: alexatm-venv)
  --verify             afterwards run one JAX program on all workers and print each host's
                       process index, process count and device counts
  --dry-run            print the exact commands; run nothing (gcloud not needed)
  -h, --help           this help

Example:
  tpu_scripts/setup.sh --name alexatm-v5p --zone us-east5-a --source_dir . --verify
EOF
}

NAME="" ZONE="" PROJECT="" REPO_URL="" SOURCE_DIR="" REF="main" PYTHON="python3.11"
REMOTE_DIR="$DEFAULT_REMOTE_REPO_DIR" VENV_DIR="$DEFAULT_REMOTE_VENV_DIR" VERIFY=0

while (($#)); do
  case "$1" in
    -h | --help) usage; exit 0 ;;
    --dry-run | --dry_run) DRY_RUN=1; shift ;;
    --name | --name=*) take_value "$@"; NAME="$REPLY"; shift "$SHIFT_BY" ;;
    --zone | --zone=*) take_value "$@"; ZONE="$REPLY"; shift "$SHIFT_BY" ;;
    --project | --project=*) take_value "$@"; PROJECT="$REPLY"; shift "$SHIFT_BY" ;;
    --repo_url | --repo_url=*) take_value "$@"; REPO_URL="$REPLY"; shift "$SHIFT_BY" ;;
    --source_dir | --source_dir=*) take_value "$@"; SOURCE_DIR="$REPLY"; shift "$SHIFT_BY" ;;
    --ref | --ref=*) take_value "$@"; REF="$REPLY"; shift "$SHIFT_BY" ;;
    --python | --python=*) take_value "$@"; PYTHON="$REPLY"; shift "$SHIFT_BY" ;;
    --remote_dir | --remote_dir=*) take_value "$@"; REMOTE_DIR="$REPLY"; shift "$SHIFT_BY" ;;
    --venv | --venv=*) take_value "$@"; VENV_DIR="$REPLY"; shift "$SHIFT_BY" ;;
    --verify) VERIFY=1; shift ;;
    *) die "unknown argument '$1'" ;;
  esac
done

require_flag "$NAME" --name
require_flag "$ZONE" --zone
validate_name "$NAME" --name
if [[ -n "$REPO_URL" && -n "$SOURCE_DIR" ]]; then
  die "give either --repo_url or --source_dir, not both"
fi
require_flag "$REPO_URL$SOURCE_DIR" "--repo_url or --source_dir" "where the workers get the code from"
if [[ -n "$SOURCE_DIR" ]]; then
  [[ -d "$SOURCE_DIR" ]] || die "--source_dir '${SOURCE_DIR}' is not a directory"
  [[ -f "$SOURCE_DIR/pyproject.toml" && -f "$SOURCE_DIR/requirements.txt" ]] ||
    die "--source_dir '${SOURCE_DIR}' is not an alexatm-jax checkout (no pyproject.toml/requirements.txt)"
  SOURCE_DIR="$(cd "$SOURCE_DIR" && pwd)"
fi
[[ "$REF" =~ ^[A-Za-z0-9._/-]+$ ]] || die "--ref '${REF}' is not a valid git ref name"
[[ "$PYTHON" =~ ^[A-Za-z0-9._/-]+$ ]] || die "--python '${PYTHON}' is not an interpreter name or path"
validate_remote_dir "$REMOTE_DIR" --remote_dir
validate_remote_dir "$VENV_DIR" --venv
require_tool gcloud
if [[ -n "$SOURCE_DIR" ]]; then
  require_tool tar
fi

gcloud_scope_flags "$ZONE" "$PROJECT"
REPO="$(remote_path "$REMOTE_DIR")"
VENV="$(remote_path "$VENV_DIR")"
TARBALL_NAME="alexatm-jax-src.tgz"

STEPS=()
if [[ -n "$SOURCE_DIR" ]]; then
  LOCAL_TARBALL="${TMPDIR:-/tmp}/${NAME}-${TARBALL_NAME}"
  note "pack the local checkout ${SOURCE_DIR} and copy it to every worker"
  run tar -C "$SOURCE_DIR" --exclude=./.git --exclude=./.venv --exclude=__pycache__ \
    --exclude=.pytest_cache --exclude='*.egg-info' -czf "$LOCAL_TARBALL" .
  run gcloud compute tpus tpu-vm scp "$LOCAL_TARBALL" "$NAME:$TARBALL_NAME" "${GCLOUD_SCOPE[@]}" --worker=all
  STEPS+=(
    "rm -rf $REPO.new"
    "mkdir -p $REPO.new"
    "tar -xzf \"\$HOME\"/$TARBALL_NAME -C $REPO.new"
    "rm -rf $REPO"
    "mv $REPO.new $REPO"
    "rm -f \"\$HOME\"/$TARBALL_NAME"
  )
else
  URL_Q="$(shell_quote "$REPO_URL")"
  # init + fetch of one ref works for a branch, a tag and a commit alike, fresh or updating.
  STEPS+=(
    "if [ ! -d $REPO/.git ]; then rm -rf $REPO; git init -q $REPO; git -C $REPO remote add origin $URL_Q; fi"
    "git -C $REPO remote set-url origin $URL_Q"
    "git -C $REPO fetch -q --depth 1 origin $REF"
    "git -C $REPO checkout -q --force FETCH_HEAD"
    "git -C $REPO clean -q -fd"
  )
fi
if [[ "$PYTHON" =~ ^python3\.[0-9]+$ ]]; then
  STEPS+=(
    "if ! command -v $PYTHON >/dev/null 2>&1; then sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $PYTHON $PYTHON-venv; fi"
  )
fi
STEPS+=(
  "[ -x $VENV/bin/python ] || $PYTHON -m venv $VENV"
  "$VENV/bin/python -m pip install -q --upgrade pip"
  "$VENV/bin/python -m pip install -q -r $REPO/requirements.txt"
  "JAX_VERSION=\$($VENV/bin/python -c 'import importlib.metadata as m; print(m.version(\"jax\"))')"
  "$VENV/bin/python -m pip install -q \"jax[tpu]==\$JAX_VERSION\""
  "$VENV/bin/python -m pip install -q -e $REPO"
  "echo \"\$(hostname): alexatm-jax installed with jax \$JAX_VERSION in $VENV_DIR\""
)

show_remote_script "every worker" "set -euo pipefail" "${STEPS[@]}"
run gcloud compute tpus tpu-vm ssh "$NAME" "${GCLOUD_SCOPE[@]}" --worker=all \
  "--command=$(join_statements "set -euo pipefail" "${STEPS[@]}")"

if ((VERIFY)); then
  VERIFY_PY='import socket, jax; jax.distributed.initialize(); print(socket.gethostname(), "process", jax.process_index(), "of", jax.process_count(), "local devices", jax.local_device_count(), "global devices", jax.device_count(), flush=True)'
  note "verify: every worker must report the same process count and global device count"
  run gcloud compute tpus tpu-vm ssh "$NAME" "${GCLOUD_SCOPE[@]}" --worker=all \
    "--command=$VENV/bin/python -c $(shell_quote "$VERIFY_PY")"
fi
note "next: tpu_scripts/launch.sh --name $NAME --zone $ZONE --gin_file gin/experiments/... --model_dir gs://BUCKET/RUN"

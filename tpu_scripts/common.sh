# shellcheck shell=bash disable=SC2034  # variables here are used by the scripts that source it
# Shared helpers for the tpu_scripts/ launchers. Source it; do not execute it.
#
# What it gives a script:
#   strict mode (set -euo pipefail), `die` with a pointer to --help, `take_value` for
#   "--flag VALUE" / "--flag=VALUE" parsing, `require_flag`, `shell_quote`/`quote_args` that
#   print arguments so that a shell (and Python's shlex) reads back exactly the same words,
#   `run` (print the exact command, then execute it unless --dry-run), `note` (a "# ..." line),
#   and the TPU facts the launchers share (runtime version and host count per accelerator type,
#   the gcloud scope flags, the remote paths on every worker).
#
# Output convention: in --dry-run every command goes to stdout as one line "+ <command>", every
# explanation as "# ..." lines; nothing is executed and gcloud/sbatch need not be installed.
# Without --dry-run the same lines go to stderr and the commands run.

set -euo pipefail

DRY_RUN=0
SCRIPT_NAME="$(basename "${BASH_SOURCE[1]:-$0}")"

# die MESSAGE...: print "error: MESSAGE" and a pointer to --help on stderr, exit 2.
die() {
  printf 'error: %s\n' "$*" >&2
  printf "Run '%s --help' for the options.\n" "$SCRIPT_NAME" >&2
  exit 2
}

# take_value "$@": read the value of the option in $1 (either "--flag=VALUE" or "--flag VALUE").
# Sets REPLY to the value and SHIFT_BY to how many words the caller must shift (1 or 2).
take_value() {
  local flag="$1"
  if [[ "$flag" == *=* ]]; then
    REPLY="${flag#*=}"
    SHIFT_BY=1
  elif (($# >= 2)) && [[ "$2" != --* ]]; then
    REPLY="$2"
    SHIFT_BY=2
  else
    die "option ${flag} needs a value (${flag} VALUE or ${flag}=VALUE)"
  fi
  [[ -n "$REPLY" ]] || die "option ${flag%%=*} was given an empty value"
}

# require_flag VALUE --flag [hint]: die naming --flag when VALUE is empty.
require_flag() {
  local value="$1" flag="$2" hint="${3:-}"
  if [[ -z "$value" ]]; then
    die "missing required flag ${flag}${hint:+ ($hint)}"
  fi
}

# require_positive_int VALUE --flag: die unless VALUE is an integer >= 1.
require_positive_int() {
  local value="$1" flag="$2"
  [[ "$value" =~ ^[1-9][0-9]*$ ]] || die "${flag} must be a positive integer, got '${value}'"
}

# require_tool NAME: die when NAME is not on PATH (only checked when commands really run).
require_tool() {
  local tool="$1"
  if ((DRY_RUN)); then
    return 0
  fi
  command -v "$tool" >/dev/null 2>&1 ||
    die "'${tool}' is not installed or not on PATH (use --dry-run to only print the commands)"
}

# shell_quote WORD: print WORD so that a POSIX shell reads it back as exactly one word, unchanged.
# Plain words are printed bare; others in single quotes ('\'' for an embedded single quote), or
# in double quotes when that avoids the '\'' escape and nothing inside would expand.
shell_quote() {
  local word="$1"
  if [[ -n "$word" && "$word" =~ ^[A-Za-z0-9_./:=,@%+-]+$ ]]; then
    printf '%s' "$word"
  elif [[ "$word" != *"'"* ]]; then
    printf "'%s'" "$word"
  elif [[ "$word" != *[\"\$\`\\!]* ]]; then
    printf '"%s"' "$word"
  else
    printf "'%s'" "${word//\'/\'\\\'\'}"
  fi
}

# quote_args WORD...: the words shell-quoted and joined by single spaces.
quote_args() {
  local out="" word
  for word in "$@"; do
    out+="${out:+ }$(shell_quote "$word")"
  done
  printf '%s' "$out"
}

# note TEXT...: an explanatory "# TEXT" line (stdout in --dry-run, stderr otherwise).
note() {
  if ((DRY_RUN)); then
    printf '# %s\n' "$*"
  else
    printf '# %s\n' "$*" >&2
  fi
}

# run CMD ARGS...: print "+ CMD ARGS" exactly (quoted); execute it unless --dry-run.
run() {
  if ((DRY_RUN)); then
    printf '+ %s\n' "$(quote_args "$@")"
    return 0
  fi
  printf '+ %s\n' "$(quote_args "$@")" >&2
  "$@"
}

# run_exec CMD ARGS...: like run, but replaces this shell with the command (signals reach it).
run_exec() {
  if ((DRY_RUN)); then
    printf '+ %s\n' "$(quote_args "$@")"
    exit 0
  fi
  printf '+ %s\n' "$(quote_args "$@")" >&2
  exec "$@"
}

# join_statements STATEMENT...: one shell line, statements separated by "; " (by " " after a
# statement that already ends in a lone "&", since "&;" is a syntax error).
join_statements() {
  local out="" statement
  for statement in "$@"; do
    if [[ -z "$out" ]]; then
      out="$statement"
    elif [[ "$out" == *[!\&]\& ]]; then
      out+=" ${statement}"
    else
      out+="; ${statement}"
    fi
  done
  printf '%s' "$out"
}

# show_remote_script WHERE STATEMENT...: print the statements one per "#   " line for review.
show_remote_script() {
  local where="$1" statement
  shift
  note "remote script, run on ${where}:"
  for statement in "$@"; do
    note "  ${statement}"
  done
}

# ---------------------------------------------------------------------------------------------
# TPU facts shared by the TPU launchers.

# The accelerator types these scripts know: v4-N and v5p-N count TensorCores (2 per chip, 4
# chips per host), v5litepod-N counts chips (1 TensorCore each, up to 8 chips per host).
ACCELERATOR_TYPE_PATTERN='^(v4|v5p|v5litepod)-[1-9][0-9]*$'

# validate_accelerator_type TYPE: die unless TYPE is a v4-*, v5p-* or v5litepod-* slice we know.
validate_accelerator_type() {
  local type="$1" size
  [[ "$type" =~ $ACCELERATOR_TYPE_PATTERN ]] ||
    die "--accelerator_type must look like v4-8..v4-4096, v5p-8..v5p-12288 or v5litepod-1..v5litepod-256, got '${type}'"
  size="${type##*-}"
  case "$type" in
    v4-* | v5p-*)
      ((size >= 8 && size % 8 == 0)) ||
        die "--accelerator_type ${type}: v4/v5p sizes count TensorCores and are multiples of 8 (e.g. ${type%-*}-8, ${type%-*}-256)"
      ;;
    v5litepod-*)
      case "$size" in
        1 | 4 | 8 | 16 | 32 | 64 | 128 | 256) ;;
        *) die "--accelerator_type ${type}: v5litepod sizes are 1, 4, 8, 16, 32, 64, 128 or 256 chips" ;;
      esac
      ;;
  esac
}

# default_runtime_version TYPE: the Cloud TPU software version recommended for JAX on TYPE.
default_runtime_version() {
  case "$1" in
    v4-*) printf 'tpu-ubuntu2204-base' ;;
    v5p-*) printf 'v2-alpha-tpuv5' ;;
    v5litepod-*) printf 'v2-alpha-tpuv5-lite' ;;
    *) die "no default runtime version for '$1'; pass --runtime_version" ;;
  esac
}

# hosts_for_accelerator TYPE: how many TPU VM hosts (workers) a slice of TYPE has. Both
# families come out as size/8 rounded up: v4/v5p hosts hold 4 chips = 8 TensorCores, and
# multi-host v5litepod slices are made of 8-chip hosts (1-, 4- and 8-chip slices are one host).
hosts_for_accelerator() {
  local size="${1##*-}"
  case "$1" in
    v4-* | v5p-* | v5litepod-*) printf '%d' $(((size + 7) / 8)) ;;
    *) die "unknown accelerator type '$1'" ;;
  esac
}

# gcloud_scope_flags ZONE [PROJECT]: sets GCLOUD_SCOPE=(--zone=... [--project=...]).
gcloud_scope_flags() {
  GCLOUD_SCOPE=("--zone=$1")
  if [[ -n "${2:-}" ]]; then
    GCLOUD_SCOPE+=("--project=$2")
  fi
}

# validate_remote_dir VALUE --flag: a directory on the workers, relative to $HOME or absolute.
validate_remote_dir() {
  local value="$1" flag="$2"
  [[ "$value" =~ ^[A-Za-z0-9._/-]+$ ]] || die "${flag} may only contain letters, digits and . _ / - (got '${value}')"
  [[ "$value" != *..* ]] || die "${flag} must not contain '..' (got '${value}')"
  [[ "$value" =~ [A-Za-z0-9] && "$value" != "." && "$value" != "/" ]] ||
    die "${flag} must name a directory, got '${value}'"
}

# remote_path DIR: DIR as the remote shell should see it (relative paths live under $HOME).
remote_path() {
  if [[ "$1" == /* ]]; then
    shell_quote "$1"
  else
    # shellcheck disable=SC2016  # $HOME is for the remote shell to expand
    printf '"$HOME"/%s' "$(shell_quote "$1")"
  fi
}

# validate_name VALUE --flag: a TPU / job name (lowercase letters, digits, hyphens).
validate_name() {
  local value="$1" flag="$2"
  [[ "$value" =~ ^[a-z]([-a-z0-9]*[a-z0-9])?$ ]] ||
    die "${flag} must start with a lowercase letter and contain only lowercase letters, digits and hyphens (got '${value}')"
}

# Defaults shared by setup.sh / launch.sh / logs.sh / stop.sh (paths on every worker).
DEFAULT_REMOTE_REPO_DIR="alexatm-jax"
DEFAULT_REMOTE_VENV_DIR="alexatm-venv"
DEFAULT_REMOTE_LOG_DIR="alexatm-logs"
DEFAULT_RUN_NAME="alexatm"

# A shell function for the remote scripts: `alive PID` succeeds while PID runs (a zombie, i.e. an
# exited process nobody has reaped yet, counts as stopped).
# shellcheck disable=SC2016  # expanded by the remote shell
REMOTE_ALIVE_FN='alive() { kill -0 "$1" 2>/dev/null || return 1; case "$(ps -o stat= -p "$1" 2>/dev/null)" in *Z*) return 1 ;; esac; }'

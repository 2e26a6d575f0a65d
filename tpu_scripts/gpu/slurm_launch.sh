#!/usr/bin/env bash
# Generate and submit an sbatch script: N GPU nodes, one alexatm-train process per node.
# shellcheck source=tpu_scripts/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/../common.sh"
# shellcheck source=tpu_scripts/gpu/gpu_env.sh
source "$(dirname "${BASH_SOURCE[0]}")/gpu_env.sh"

usage() {
  cat <<EOF
Usage: gpu/slurm_launch.sh --nodes N --gin_file FILE [--gin_file FILE...] --model_dir DIR
                           [--gin.KEY=VALUE...] [options]

Writes an sbatch script and submits it with sbatch. The job runs ONE process per node
(srun --ntasks-per-node=1), each driving all --gpus_per_node GPUs of its node, the same
one-process-per-host layout as a TPU pod: N processes, N x gpus_per_node devices. In the job:
  ALEXATM_COORDINATOR_ADDRESS = first host of \$SLURM_JOB_NODELIST (scontrol show hostnames)
                                + ":" + --coordinator_port
  ALEXATM_NUM_PROCESSES       = \$SLURM_NTASKS (= N)       set per task, inside srun
  ALEXATM_PROCESS_ID          = \$SLURM_PROCID (0..N-1)    set per task, inside srun
plus the GPU XLA flags and environment of gpu/gpu_env.sh. Slurm sends SIGTERM to the trainers
--signal_grace seconds before the time limit, so they checkpoint before being killed; a manual
graceful stop is \`scancel --signal=TERM JOBID\`. Every node logs to
LOG_DIR/JOBNAME-JOBID-node<i>.log; the batch script itself to LOG_DIR/JOBNAME-JOBID.out.
--model_dir and --workdir must be visible from every node (gs:// or a shared filesystem).

Required:
  --nodes N                  number of nodes (e.g. 16 for 16 x 8 H100)

${TRAINING_OPTIONS_HELP}

Slurm options:
  --gpus_per_node G          GPUs per node (default: 8)
  --job_name NAME            (default: alexatm)
  --time D-HH:MM:SS          time limit (default: the partition's)
  --partition P, --account A, --qos Q
  --cpus_per_task C          CPUs for each node's process (default: all CPUs of the node,
                             \$SLURM_CPUS_ON_NODE; the input pipeline needs them)
  --coordinator_port PORT    (default: 12345)
  --signal_grace SECONDS     SIGTERM this long before the time limit (default: 300)
  --log_dir DIR              where the logs go (default: WORKDIR/slurm_logs)
  --script_out FILE          where the sbatch script is written (default: LOG_DIR/JOBNAME.sbatch)
  --dry-run                  print the sbatch script and the sbatch command; write and submit
                             nothing (sbatch not needed)
  -h, --help                 this help

Example (16 nodes x 8 H100 = 128 GPUs):
  tpu_scripts/gpu/slurm_launch.sh --nodes 16 --time 2-00:00:00 --partition gpu \\
      --gin_file gin/experiments/alexatm_20b_h100_16x8.gin --model_dir gs://my-bucket/alexatm-h100 \\
      --venv /shared/alexatm-venv
EOF
}

NODES="" GPUS_PER_NODE=8 JOB_NAME="alexatm" TIME_LIMIT="" PARTITION="" ACCOUNT="" QOS=""
CPUS_PER_TASK="" COORDINATOR_PORT=12345 SIGNAL_GRACE=300 LOG_DIR="" SCRIPT_OUT=""

while (($#)); do
  case "$1" in
    -h | --help) usage; exit 0 ;;
    --dry-run | --dry_run) DRY_RUN=1; shift ;;
    --nodes | --nodes=*) take_value "$@"; NODES="$REPLY"; shift "$SHIFT_BY" ;;
    --gpus_per_node | --gpus_per_node=*) take_value "$@"; GPUS_PER_NODE="$REPLY"; shift "$SHIFT_BY" ;;
    --job_name | --job_name=*) take_value "$@"; JOB_NAME="$REPLY"; shift "$SHIFT_BY" ;;
    --time | --time=*) take_value "$@"; TIME_LIMIT="$REPLY"; shift "$SHIFT_BY" ;;
    --partition | --partition=*) take_value "$@"; PARTITION="$REPLY"; shift "$SHIFT_BY" ;;
    --account | --account=*) take_value "$@"; ACCOUNT="$REPLY"; shift "$SHIFT_BY" ;;
    --qos | --qos=*) take_value "$@"; QOS="$REPLY"; shift "$SHIFT_BY" ;;
    --cpus_per_task | --cpus_per_task=*) take_value "$@"; CPUS_PER_TASK="$REPLY"; shift "$SHIFT_BY" ;;
    --coordinator_port | --coordinator_port=*) take_value "$@"; COORDINATOR_PORT="$REPLY"; shift "$SHIFT_BY" ;;
    --signal_grace | --signal_grace=*) take_value "$@"; SIGNAL_GRACE="$REPLY"; shift "$SHIFT_BY" ;;
    --log_dir | --log_dir=*) take_value "$@"; LOG_DIR="$REPLY"; shift "$SHIFT_BY" ;;
    --script_out | --script_out=*) take_value "$@"; SCRIPT_OUT="$REPLY"; shift "$SHIFT_BY" ;;
    *)
      parse_training_option "$@" || die "unknown argument '$1'"
      shift "$SHIFT_BY"
      ;;
  esac
done

require_flag "$NODES" --nodes "number of GPU nodes"
require_positive_int "$NODES" --nodes
require_positive_int "$GPUS_PER_NODE" --gpus_per_node
require_positive_int "$COORDINATOR_PORT" --coordinator_port
((COORDINATOR_PORT < 65536)) || die "--coordinator_port must be below 65536, got ${COORDINATOR_PORT}"
require_positive_int "$SIGNAL_GRACE" --signal_grace
[[ -z "$CPUS_PER_TASK" ]] || require_positive_int "$CPUS_PER_TASK" --cpus_per_task
[[ "$JOB_NAME" =~ ^[A-Za-z0-9._-]+$ ]] || die "--job_name may only contain letters, digits and . _ - (got '${JOB_NAME}')"
[[ -z "$TIME_LIMIT" || "$TIME_LIMIT" =~ ^([0-9]+-)?[0-9]+(:[0-9]{2}){0,2}$ ]] ||
  die "--time must look like MINUTES, HH:MM:SS or D-HH:MM:SS, got '${TIME_LIMIT}'"
for value in "$PARTITION" "$ACCOUNT" "$QOS"; do
  [[ "$value" =~ ^[A-Za-z0-9._,-]*$ ]] || die "--partition/--account/--qos: unexpected characters in '${value}'"
done
validate_training_options
if ((NODES > 1)) && [[ "$MODEL_DIR" != gs://?* && "$MODEL_DIR" != /* ]]; then
  die "--model_dir must be gs://BUCKET/PATH or an absolute path on a filesystem shared by all ${NODES} nodes, got '${MODEL_DIR}'"
fi
LOG_DIR="${LOG_DIR:-$WORKDIR/slurm_logs}"
[[ "$LOG_DIR" == /* ]] || LOG_DIR="$PWD/$LOG_DIR"
[[ "$LOG_DIR" =~ ^[A-Za-z0-9._/-]+$ ]] || die "--log_dir may only contain letters, digits and . _ / - (#SBATCH lines cannot quote), got '${LOG_DIR}'"
SCRIPT_OUT="${SCRIPT_OUT:-$LOG_DIR/$JOB_NAME.sbatch}"
require_tool sbatch

gpu_env_assignments
trainer_command
CPUS_FOR_SRUN="${CPUS_PER_TASK:-\$SLURM_CPUS_ON_NODE}"

# sbatch_script: print the batch script to stdout.
# shellcheck disable=SC2016  # single-quoted lines are expanded when the job runs
sbatch_script() {
  local assignment
  echo '#!/usr/bin/env bash'
  echo "#SBATCH --job-name=$JOB_NAME"
  echo "#SBATCH --nodes=$NODES"
  echo "#SBATCH --ntasks-per-node=1"
  echo "#SBATCH --gpus-per-node=$GPUS_PER_NODE"
  [[ -z "$CPUS_PER_TASK" ]] || echo "#SBATCH --cpus-per-task=$CPUS_PER_TASK"
  echo "#SBATCH --exclusive"
  [[ -z "$TIME_LIMIT" ]] || echo "#SBATCH --time=$TIME_LIMIT"
  [[ -z "$PARTITION" ]] || echo "#SBATCH --partition=$PARTITION"
  [[ -z "$ACCOUNT" ]] || echo "#SBATCH --account=$ACCOUNT"
  [[ -z "$QOS" ]] || echo "#SBATCH --qos=$QOS"
  echo "#SBATCH --signal=TERM@$SIGNAL_GRACE"
  echo "#SBATCH --output=$LOG_DIR/%x-%j.out"
  echo "# Generated by tpu_scripts/gpu/slurm_launch.sh: ${NODES} node(s) x ${GPUS_PER_NODE} GPU(s), one process per node."
  echo 'set -euo pipefail'
  echo "cd $(shell_quote "$WORKDIR")"
  for assignment in "${GPU_ENV[@]}"; do
    echo "export $(shell_quote "$assignment")"
  done
  echo 'mapfile -t JOB_HOSTS < <(scontrol show hostnames "$SLURM_JOB_NODELIST")'
  echo "export ALEXATM_COORDINATOR_ADDRESS=\"\${JOB_HOSTS[0]}:$COORDINATOR_PORT\""
  echo "command -v $(shell_quote "${TRAINER_CMD[0]}") >/dev/null || { echo \"$(shell_quote "${TRAINER_CMD[0]}") not found on \$(hostname)\" >&2; exit 1; }"
  echo 'echo "job $SLURM_JOB_ID: ${#JOB_HOSTS[@]} node(s) ${JOB_HOSTS[*]}; coordinator $ALEXATM_COORDINATOR_ADDRESS"'
  echo "srun --ntasks-per-node=1 --cpus-per-task=\"$CPUS_FOR_SRUN\" --kill-on-bad-exit=1 \\"
  echo "  --output=$(shell_quote "$LOG_DIR")/\"\$SLURM_JOB_NAME-\$SLURM_JOB_ID\"-node%n.log \\"
  echo "  bash -c 'export ALEXATM_PROCESS_ID=\"\$SLURM_PROCID\" ALEXATM_NUM_PROCESSES=\"\$SLURM_NTASKS\"; exec \"\$@\"' alexatm-task \\"
  echo "  $(quote_args "${TRAINER_CMD[@]}")"
}

if ((DRY_RUN)); then
  note "sbatch script (written to ${SCRIPT_OUT} and submitted without --dry-run):"
  echo "# ---- begin sbatch script ----"
  sbatch_script
  echo "# ---- end sbatch script ----"
else
  run mkdir -p "$LOG_DIR" "$(dirname "$SCRIPT_OUT")"
  sbatch_script >"$SCRIPT_OUT"
  note "wrote ${SCRIPT_OUT}"
fi
run sbatch "$SCRIPT_OUT"
note "logs: ${LOG_DIR}/${JOB_NAME}-JOBID-node<i>.log; graceful stop: scancel --signal=TERM JOBID"

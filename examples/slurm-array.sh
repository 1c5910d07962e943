#!/usr/bin/env bash
# Slurm job array: one array task per line of a model list, each a single `quantcli convert`.
#
#   n=$(grep -Evc '^\s*(#|$)' models.txt)
#   sbatch --array=1-"$n"%4 examples/slurm-array.sh models.txt      (%4: at most 4 tasks at a time)
#
# models.txt: `SOURCE TYPE OUTPUT` per line (see examples/models.txt). Outputs should be on a filesystem
# every node sees. Re-submitting the same array is safe: finished outputs are skipped, and a task that was
# preempted or hit its time limit continues from its per-tensor cache (--resume) instead of starting over.
# Hub downloads go to $HF_HOME (shared, so each model is fetched once); set HF_TOKEN for gated models.
#
#SBATCH --job-name=quantcli
#SBATCH --array=1-3
#SBATCH --cpus-per-task=8
#SBATCH --mem=16G
#SBATCH --time=04:00:00
#SBATCH --requeue
#SBATCH --output=quantcli-%A_%a.out
set -euo pipefail

models=${1:-models.txt}
task=${SLURM_ARRAY_TASK_ID:?run me with sbatch --array=...}
quantcli=${QUANTCLI:-quantcli}

# The task's line among the non-comment, non-blank lines (1-based, like the array index).
line=$(sed -e 's/#.*//' -e 's/[[:space:]]*$//' "$models" | grep -Ev '^[[:space:]]*$' | sed -n "${task}p")
if [[ -z $line ]]; then
  echo "no line $task in $models" >&2
  exit 2
fi
read -r source type output <<<"$line"

if [[ -e $output ]]; then
  echo "$output exists: done already" >&2
  exit 0
fi
mkdir -p "$(dirname "$output")"
# Memory stays near the largest tensor (streaming); threads follow the allocation.
exec $quantcli convert "$source" --type "$type" -o "$output" \
  --threads "${SLURM_CPUS_PER_TASK:-1}" --resume --json

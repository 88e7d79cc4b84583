#!/bin/bash
# A SLURM job array without any engine: each array task relaxes its share of the pool (--shard k/N)
# into runs/relax/shard-k-of-N; after the array, `committee-merge runs/relax` combines the shards into
# runs/relax (the files of the unsharded run), e.g. as a dependent job:
#   jid=$(sbatch --parsable examples/cluster/array.sh)
#   sbatch --dependency=afterok:$jid --wrap "committee-merge runs/relax"
# A shard that is killed (walltime) resumes when resubmitted with the same command.
#SBATCH --job-name=relax-shard
#SBATCH --array=1-8
#SBATCH --cpus-per-task=1
#SBATCH --time=02:00:00
set -euo pipefail
N=8
source .venv/bin/activate
committee-relax pool.extxyz --committee committee.yaml --reference reference.yaml \
    --labels labels.extxyz --out runs/relax --cell --fmax-eVA 0.02 \
    --threshold-forces-std-max-eVA 0.3 --no-progress \
    --shard "${SLURM_ARRAY_TASK_ID}/${N}"

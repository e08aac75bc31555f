#!/bin/bash
# Sourced by pretrain.sbatch and train.sbatch: the torchrun launch of one node, run by `srun` once
# per node. The c10d rendezvous runs on the job's first node; every process finds the others there.
# GPUs per node: SLURM's count (--gpus-per-node), or 1 process per node on CPU-only nodes (gloo).
nodes=${SLURM_NNODES:-1}
gpus=${SLURM_GPUS_ON_NODE:-1}
head=$(scontrol show hostnames "${SLURM_JOB_NODELIST}" | head -n 1)
port=${MVMAE_RDZV_PORT:-29500}
torchrun_cmd=(torchrun --nnodes "$nodes" --nproc-per-node "$gpus" --rdzv-backend c10d
              --rdzv-endpoint "$head:$port" --rdzv-id "${SLURM_JOB_ID:-mvmae}" -m mvmae.cli)

#!/usr/bin/env bash
# One 8-GPU node (H100/H200): install with CUDA JAX and run a config on all local GPUs (one process, 8 devices).
#   launch/gpu_node.sh CONFIG [--resume] [key=value ...]
#   DRY_RUN=1 launch/gpu_node.sh configs/qwen2.5-math-7b_8xh100.yaml   # print the commands only
# Several nodes without SLURM: run this on each node with JAX_COORDINATOR_ADDRESS=node0:1234 JAX_NUM_PROCESSES=N
# JAX_PROCESS_ID=i set (or distributed.* overrides); train joins them (jax_distill/train/distributed.py, docs/pod.md).
set -euo pipefail
config=${1:?usage: launch/gpu_node.sh CONFIG [--resume] [key=value ...]}
shift
run() { printf '%q ' "$@"; echo; if [ "${DRY_RUN:-0}" != 1 ]; then "$@"; fi; }
run python3 -m pip install --upgrade "jax-distill[gpu]"
# XLA flags that help large GPU training steps (latency-hiding scheduler overlaps FSDP collectives with compute).
export XLA_FLAGS="${XLA_FLAGS:-} --xla_gpu_enable_latency_hiding_scheduler=true"
run jax-distill train --config "$config" --no-progress "$@"

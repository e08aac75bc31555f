#!/bin/bash
# Extraction of one split list on a Ray cluster: the videos are extracted by Ray tasks spread over
# the cluster's nodes, the shards written into one shared OUT_DIR (every node must see it at the
# same path: NFS, Lustre, or a bucket mounted the same way). Resumable as `mvmae extract run` is:
# run the same command again after a failure and it skips the complete shards.
#
#   # once per cluster: on the head node          on every other node
#   ray start --head --port 6379                  # ray start --address HEAD_IP:6379
#   examples/ray/extract.sh lists/uavhuman/csv1/train.txt shards/uavhuman/csv1 train
#
# RAY_ADDRESS=HEAD_IP:6379 (the one line to change, or export it) names the cluster; run this on
# any node of it, from the repository root.
set -euo pipefail
RAY_ADDRESS=${RAY_ADDRESS:-127.0.0.1:6379}   # <- the one line to change: your head node's address
usage="usage: examples/ray/extract.sh LIST OUT_DIR SPLIT [OPTIONS of mvmae extract run]"
list=${1:?$usage}; out=${2:?$usage}; split=${3:?$usage}
mvmae extract run "$list" "$out" --split "$split" --engine ray --ray-address "$RAY_ADDRESS" \
    "${@:4}"

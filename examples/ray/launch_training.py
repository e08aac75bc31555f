"""Launch ``mvmae pretrain`` or ``mvmae train`` on N nodes of a Ray cluster.

One torchrun launcher per node (a STRICT_SPREAD placement group: one bundle per node), all
meeting at a c10d rendezvous on the first bundle's node; each launcher starts one process per GPU.
Run it from the repository root on any node of the cluster; everything after ``--`` is the mvmae
command line, the same on every node (paths must be the same on every node: a shared filesystem).

    python examples/ray/launch_training.py --address HEAD_IP:6379 --nodes 2 --gpus-per-node 8 -- \\
        pretrain --config configs/uavhuman/pretrain.yaml --train 'shards/csv1/train-{000000..000252}.tar' \\
        --codebook codebooks/csv1.npz --out runs/csv1/pretrain --resume

Always pass ``--resume``: if a node is lost, run the same command again and the run continues
from its last checkpoint exactly.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import uuid

import ray
from ray.util.placement_group import placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

RDZV_PORT = 29500


@ray.remote
def node_address() -> str:
    return ray.util.get_node_ip_address()


@ray.remote
def run_launcher(nodes: int, gpus: int, endpoint: str, run_id: str, is_host: bool, mvmae_args: list[str]) -> int:
    """One node's torchrun launcher; its exit status. The first node's hosts the rendezvous store
    (``is_host``: torchrun would otherwise guess from the host name, and a node whose name does
    not resolve to the address Ray knows it by would wait for a store nobody starts); each node
    is reached at the address Ray knows it by (``--local-addr``)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", str(nodes), "--nproc-per-node",
           str(max(gpus, 1)), "--rdzv-backend", "c10d", "--rdzv-endpoint", endpoint, "--rdzv-id", run_id,
           "--rdzv-conf", f"is_host={int(is_host)}", "--local-addr", ray.util.get_node_ip_address(),
           "-m", "mvmae.cli", *mvmae_args]
    return subprocess.run(cmd).returncode


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--address", default="auto", help="Ray cluster address (HEAD_IP:6379) [auto]")
    parser.add_argument("--nodes", type=int, required=True)
    parser.add_argument("--gpus-per-node", type=int, default=0, help="0: CPU nodes, one process each (gloo)")
    parser.add_argument("--cpus-per-node", type=int, default=1, help="CPUs each launcher reserves")
    parser.add_argument("--rdzv-port", type=int, default=RDZV_PORT,
                        help=f"port of the rendezvous on the first node [{RDZV_PORT}]")
    parser.add_argument("mvmae_args", nargs=argparse.REMAINDER, help="-- then the mvmae command line")
    args = parser.parse_args(argv)
    args.mvmae_args = args.mvmae_args[1:] if args.mvmae_args[:1] == ["--"] else args.mvmae_args
    if not args.mvmae_args or args.mvmae_args[0] not in ("pretrain", "train"):
        parser.error("give the mvmae command after --: pretrain ... or train ...")
    return args


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    ray.init(address=args.address)
    bundle = {"CPU": args.cpus_per_node, **({"GPU": args.gpus_per_node} if args.gpus_per_node else {})}
    group = placement_group([bundle] * args.nodes, strategy="STRICT_SPREAD")
    ray.get(group.ready())
    try:
        on = [PlacementGroupSchedulingStrategy(group, placement_group_bundle_index=i) for i in range(args.nodes)]
        head = ray.get(node_address.options(scheduling_strategy=on[0], num_cpus=0).remote())
        endpoint, run_id = f"{head}:{args.rdzv_port}", uuid.uuid4().hex[:12]
        launchers = [run_launcher.options(scheduling_strategy=s, num_cpus=args.cpus_per_node,
                                          num_gpus=args.gpus_per_node).remote(
            args.nodes, args.gpus_per_node, endpoint, run_id, i == 0, args.mvmae_args) for i, s in enumerate(on)]
        codes = ray.get(launchers)
    finally:
        remove_placement_group(group)
    print(f"launchers exited with {codes}")
    return max(codes, key=abs)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""Two torchrun launchers on loopback acting as two nodes (gloo on CPU), as a cluster starts them:
``torchrun --nnodes 2 --nproc-per-node 1 --rdzv-backend c10d --rdzv-endpoint HOST:PORT`` on each
node. On one machine both launchers would try to host the rendezvous store; ``is_host=1`` on
node 0 and ``is_host=0`` on node 1 makes it deterministic. gloo binds where the host name
resolves, so ``GLOO_SOCKET_IFNAME=lo`` keeps it on loopback. c10d gives out ranks in the order the
nodes join: which node holds rank 0 is not fixed (tests must not depend on it).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
NUM_NODES = 2


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def node_command(node: int, port: int, *args: str) -> list[str]:
    """The torchrun launch of ``python -m mvmae.cli ARGS`` on node ``node`` (0 hosts the store)."""
    return [sys.executable, "-m", "torch.distributed.run", "--nnodes", str(NUM_NODES), "--nproc-per-node", "1",
            "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", "mvmae-nodes",
            "--rdzv-conf", f"is_host={int(node == 0)}", "--local-addr", "127.0.0.1",
            "-m", "mvmae.cli", *args]


def node_env() -> dict:
    """This checkout first, no GPU, one intra-op thread, gloo on loopback."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
            "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", "GLOO_SOCKET_IFNAME": "lo"}


def start_nodes(args: list[str], logs: Path, port: int | None = None) -> list[subprocess.Popen]:
    """Both launchers of ``mvmae ARGS``, each in its own session (so a test can kill one node's
    whole process tree), output in ``logs/node<i>.log``."""
    port = port or free_port()
    logs.mkdir(parents=True, exist_ok=True)
    procs = []
    for node in range(NUM_NODES):
        with open(logs / f"node{node}.log", "ab") as log:
            procs.append(subprocess.Popen(node_command(node, port, *args), env=node_env(), cwd=logs,
                                          stdout=log, stderr=subprocess.STDOUT, start_new_session=True))
    return procs


def wait_nodes(procs: list[subprocess.Popen], timeout_s: float) -> list[int]:
    """Every launcher's exit status; kills them all (and raises) past ``timeout_s``: a hang."""
    deadline = time.monotonic() + timeout_s
    try:
        return [p.wait(timeout=max(0.1, deadline - time.monotonic())) for p in procs]
    except subprocess.TimeoutExpired:
        kill_nodes(procs)
        raise AssertionError(f"the nodes were still running after {timeout_s} s: an epoch hung")


def _descendants(pid: int) -> list[int]:
    """Every process below ``pid``, from /proc's parent links."""
    parents = {}
    for entry in os.listdir("/proc"):
        try:
            parents[int(entry)] = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (ValueError, OSError, IndexError):
            continue
    found, frontier = [], [pid]
    while frontier:
        frontier = [child for child, parent in parents.items() if parent in frontier]
        found += frontier
    return found


def kill_nodes(procs: list[subprocess.Popen]) -> None:
    """SIGKILL to each launcher and everything below it: torchrun starts each worker in a session
    of its own, so the launcher's process group alone would leave the workers training."""
    for proc in procs:
        for pid in [proc.pid, *_descendants(proc.pid)]:
            for kill in (os.killpg, os.kill):
                try:
                    kill(pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
        proc.wait()


def log_text(logs: Path, node: int) -> str:
    return (logs / f"node{node}.log").read_text(errors="replace")

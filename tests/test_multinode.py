"""Multi-node DDP with torchrun: two "nodes" on one machine, each a separate torchrun launch
(``--nnodes 2 --node_rank 0|1 --master_addr 127.0.0.1``) of the unchanged train.py, as on two
hosts of a cluster sharing a file system. Lightning finds the ranks in torchrun's environment."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, base_args

pytestmark = [pytest.mark.ddp, pytest.mark.slow]

# A callback every rank runs, so each launch says where it ended (only rank 0 prints the summary).
PROBE = '''
from lightning.pytorch import Callback


class ReportStep(Callback):
    def on_fit_end(self, trainer, pl_module):
        print(f"rank {trainer.global_rank}/{trainer.world_size} node {trainer.node_rank} "
              f"fit ended at global step {trainer.global_step}", flush=True)
'''
REPORT = re.compile(r"rank (\d+)/(\d+) node (\d+) fit ended at global step (\d+)")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def launch_node(node_rank: int, port: int, args: list[str], cwd: Path,
                extra_path: Path) -> subprocess.Popen[str]:
    env = dict(os.environ, PYTHONUNBUFFERED="1",
               PYTHONPATH=os.pathsep.join([str(REPO), str(extra_path),
                                           os.environ.get("PYTHONPATH", "")]))
    command = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2",
               "--nproc_per_node", "1", "--node_rank", str(node_rank),
               "--master_addr", "127.0.0.1", "--master_port", str(port),
               str(REPO / "train.py"), *args]
    # Its own process group, so a hung launch is killed with every worker it started.
    return subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)


def wait_all(launches: list[subprocess.Popen[str]], timeout: float) -> list[str]:
    outputs = []
    try:
        for launch in launches:
            outputs.append(launch.communicate(timeout=timeout)[0])
    finally:
        for launch in launches:
            if launch.poll() is None:
                os.killpg(launch.pid, signal.SIGKILL)
                launch.wait()
    return outputs


def test_two_torchrun_nodes_train_together_and_end_on_the_same_step(
    tmp_path: Path, digits_root: Path
) -> None:
    (tmp_path / "multinode_probe.py").write_text(PROBE)
    logs = tmp_path / "logs"
    args = [*base_args(digits_root, logs), "--num_nodes", "2", "--devices", "1",
            "--accelerator", "cpu", "--strategy", "ddp", "--max_epochs", "1",
            "--trainer.limit_train_batches=3", "--trainer.limit_val_batches=2",
            "--trainer.limit_test_batches=2",
            "--trainer.callbacks+=multinode_probe.ReportStep"]
    port = free_port()
    launches = [launch_node(rank, port, args, tmp_path, tmp_path) for rank in (0, 1)]
    outputs = wait_all(launches, timeout=240)

    for node_rank, (launch, output) in enumerate(zip(launches, outputs, strict=True)):
        assert launch.returncode == 0, f"node {node_rank}:\n{output[-4000:]}"
    reports = [REPORT.findall(output) for output in outputs]
    # One process per node, global ranks 0 and 1 of 2, and both stopped on the same step: each
    # trained on its half of the 3 batches per rank.
    assert reports == [[("0", "2", "0", "3")], [("1", "2", "1", "3")]], outputs
    assert "Run summary" in outputs[0] and "Run summary" not in outputs[1]
    (run,) = (logs / "digits").glob("version_*")  # one run folder, written by global rank 0
    assert (run / "checkpoints" / "last.ckpt").is_file()

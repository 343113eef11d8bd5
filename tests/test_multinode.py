"""DDP under torchrun, from a fresh machine's state (no data written yet): one node with two
processes (``--nproc_per_node 2``), and two "nodes" on one machine, each a separate torchrun
launch (``--nnodes 2 --node_rank 0|1 --master_addr 127.0.0.1``) of the unchanged train.py, as on
two hosts of a cluster sharing a file system. Lightning finds the ranks in torchrun's
environment; its prepare_data (local rank 0 of each node) writes the digits before any rank
reads them."""

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


def launch_node(node_rank: int, port: int, args: list[str], cwd: Path, extra_path: Path,
                nnodes: int = 2, nproc_per_node: int = 1) -> subprocess.Popen[str]:
    env = dict(os.environ, PYTHONUNBUFFERED="1",
               PYTHONPATH=os.pathsep.join([str(REPO), str(extra_path),
                                           os.environ.get("PYTHONPATH", "")]))
    command = [sys.executable, "-m", "torch.distributed.run", "--nnodes", str(nnodes),
               "--nproc_per_node", str(nproc_per_node), "--node_rank", str(node_rank),
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


@pytest.mark.parametrize("nodes", [1, 2], ids=["one_node_two_processes", "two_nodes"])
def test_torchrun_on_a_fresh_machine_trains_together_and_ends_on_the_same_step(
    tmp_path: Path, nodes: int
) -> None:
    (tmp_path / "multinode_probe.py").write_text(PROBE)
    logs, data = tmp_path / "logs", tmp_path / "data" / "digits"  # nothing written yet
    args = [*base_args(data, logs), "--num_nodes", str(nodes), "--devices", str(2 // nodes),
            "--accelerator", "cpu", "--strategy", "ddp", "--max_epochs", "1",
            "--trainer.limit_train_batches=3", "--trainer.limit_val_batches=2",
            "--trainer.limit_test_batches=2",
            "--trainer.callbacks+=multinode_probe.ReportStep"]
    port = free_port()
    launches = [launch_node(rank, port, args, tmp_path, tmp_path, nnodes=nodes,
                            nproc_per_node=2 // nodes) for rank in range(nodes)]
    outputs = wait_all(launches, timeout=240)

    for node_rank, (launch, output) in enumerate(zip(launches, outputs, strict=True)):
        assert launch.returncode == 0, f"node {node_rank}:\n{output[-4000:]}"
    output = "".join(outputs)
    reports = sorted(REPORT.findall(output))
    # Global ranks 0 and 1 of 2, on their nodes, both stopped on the same step: 3 batches each,
    # from their own halves of the data.
    node_of = (lambda rank: rank) if nodes == 2 else (lambda rank: 0)
    assert reports == [(str(r), "2", str(node_of(r)), "3") for r in (0, 1)], outputs
    assert output.count("Run summary") == 1  # rank 0 only
    (run,) = (logs / "digits").glob("version_*")  # one run folder, written by global rank 0
    assert (run / "checkpoints" / "last.ckpt").is_file()
    assert len(list((data / "images").glob("*.png"))) == 1797


# Counts, per process, the image files the pre-flight check opens and the images decoded into
# the cache (imported by every rank when the parser resolves the callback's class path, before
# the data is read), and says which classes each rank trained on.
SPY = '''
import os
import time
from lightning.pytorch import Callback
from datamodules import image_csv, validation

checked = validation.check_chunk


def counting_check_chunk(chunk, *args, **kwargs):
    with open(os.path.join(os.environ["SPY_FOLDER"], f"{os.getpid()}.count"), "a") as out:
        out.write(f"{len(chunk)}\\n")
    time.sleep(2)  # a slow disk: ranks that checked at the same time would overlap here
    return checked(chunk, *args, **kwargs)


validation.check_chunk = counting_check_chunk
decode = image_csv.load_image


def counting_load_image(path, mode):
    count = os.path.join(os.environ["SPY_FOLDER"], f"{os.getpid()}.decoded")
    if not os.path.exists(count):
        time.sleep(2)  # as with the checks: ranks decoding at the same time would overlap
    with open(count, "a") as out:
        out.write("1\\n")
    return decode(path, mode)


image_csv.load_image = counting_load_image


class Spy(Callback):
    def on_fit_end(self, trainer, pl_module):
        print(f"rank {trainer.global_rank} step {trainer.global_step} classes "
              f"{trainer.datamodule.class_names}", flush=True)
'''


def test_torchrun_ranks_of_a_node_check_and_decode_a_user_folder_once_and_agree(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.test_image_csv import make_images

    table = make_images(tmp_path / "user", 48, ["cat", "dog", "bird"], size=8)
    (tmp_path / "check_spy.py").write_text(SPY)
    (tmp_path / "spy").mkdir()
    monkeypatch.setenv("SPY_FOLDER", str(tmp_path / "spy"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # no record yet
    launch = launch_node(0, free_port(), [
        "--data=datamodules.image_csv.ImageCSVDataModule", f"--data.annotations={table}",
        "--data.read_mode=GRAY", "--data.num_workers=0", "--data.batch_size=4",
        "--devices", "2", "--accelerator", "cpu", "--strategy", "ddp", "--max_epochs", "1",
        f"--trainer.logger.init_args.save_dir={tmp_path / 'logs'}",
        "--trainer.enable_progress_bar=false", "--trainer.limit_train_batches=2",
        "--trainer.limit_val_batches=1", "--trainer.limit_test_batches=1",
        "--trainer.callbacks+=check_spy.Spy",
    ], tmp_path, tmp_path, nnodes=1, nproc_per_node=2)
    (output,) = wait_all([launch], timeout=240)

    assert launch.returncode == 0, output[-4000:]
    # Both ranks read the same table: the same classes, trained to the same step.
    reports = sorted(re.findall(r"rank (\d) step (\d+) classes (.*)", output))
    assert reports == [(r, "2", "['bird', 'cat', 'dog']") for r in "01"], output[-4000:]
    def per_process(suffix: str) -> list[int]:
        return [sum(map(int, f.read_text().split())) for f in (tmp_path / "spy").glob(suffix)]

    # Every file checked, and decoded into the cache, once on this node, not once per rank.
    assert sum(per_process("*.count")) == 48, per_process("*.count")
    assert sum(per_process("*.decoded")) == 48, per_process("*.decoded")

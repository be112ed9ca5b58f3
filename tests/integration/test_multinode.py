"""Multi-node torchrun on one machine: two "nodes" (two torchrun agents, one worker each) meet through a
c10d rendezvous on 127.0.0.1 with gloo and train into one shared run directory; the result must equal a
one-node run of the same global batch and world size (two workers under one torchrun; not a one-process run, since
each rank seeds its noise from (seed, rank, step))."""
import json
import os
import subprocess
import sys

import torch

from dtr_plugins.launchers.torchrun import torchrun_command

from ..conftest import free_port, tiny_dit_config


def test_two_nodes_on_localhost_equal_one_node(tmp_path):
    cfg = tiny_dit_config(tmp_path, train={"steps": 4, "ckpt_every": 4})
    env = dict(os.environ, OMP_NUM_THREADS="1")
    one_node = tmp_path / "one_node"
    cmd = torchrun_command(sys.executable, cfg, one_node, nnodes=1, nproc_per_node=2, rdzv_host="127.0.0.1",
                           rdzv_port=0, rdzv_id="one", resume=False)
    single = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    two_nodes = tmp_path / "two_nodes"  # the shared filesystem: both nodes get the same run directory
    port = free_port()
    nodes = [subprocess.Popen(torchrun_command(sys.executable, cfg, two_nodes, nnodes=2, nproc_per_node=1,
                                               rdzv_host="127.0.0.1", rdzv_port=port, rdzv_id="test", resume=False),
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for _ in range(2)]
    for proc in (single, *nodes):
        out, _ = proc.communicate(timeout=300)
        assert proc.returncode == 0, out[-3000:]

    meta = json.loads((two_nodes / "meta.json").read_text())
    assert meta["world_size"] == 2 and meta["ranks_in_sync"] is True
    assert json.loads((one_node / "meta.json").read_text())["world_size"] == 2
    # only global rank 0 writes: both run directories hold the same files
    files = lambda d: sorted(str(p.relative_to(d)) for p in d.rglob("*") if p.is_file())  # noqa: E731
    assert files(two_nodes) == files(one_node)
    a = torch.load(one_node / "checkpoints" / "0000004.pt", weights_only=True)
    b = torch.load(two_nodes / "checkpoints" / "0000004.pt", weights_only=True)
    for key in ("model", "ema"):
        for name in a[key]:
            assert torch.equal(a[key][name], b[key][name]), (key, name)
    losses = lambda d: [r["loss"] for r in map(json.loads, (d / "metrics.jsonl").read_text().splitlines())  # noqa: E731
                        if "loss" in r]
    assert losses(two_nodes) == losses(one_node)

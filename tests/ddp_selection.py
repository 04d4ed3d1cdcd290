"""`torchrun --nproc_per_node N ddp_selection.py OUT`: each process takes its slice of one fixed global batch of
AN losses and selects through `select_over_processes`; it saves its selections to OUT/rank{R}.pt."""

import os
import sys

import torch
import torch.distributed as dist

from wsml_fast.schemes.large_loss.training import LargeLoss, select_over_processes

dist.init_process_group("gloo")
B, C = 6, 7  # per process
world, rank = dist.get_world_size(), dist.get_rank()
generator = torch.Generator().manual_seed(0)
losses = torch.rand(B * world, C, generator=generator).round(decimals=1)  # ties included
unobserved = torch.rand(B * world, C, generator=generator) < 0.7
mine = slice(rank * B, (rank + 1) * B)
selected, everyone = select_over_processes(
    losses[mine], unobserved[mine], epoch=4, delta_rel=9.0, kind=LargeLoss.TEMPORARY_CORRECTION
)
torch.save({"selected": selected, "everyone": everyone}, os.path.join(sys.argv[1], f"rank{rank}.pt"))
dist.destroy_process_group()

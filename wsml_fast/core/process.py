"""The process's decisions, made once where a command starts and handed down: which process of the job this is,
whether it writes, its device and precision; and the process-wide switches a command sets for its duration.

Library code receives a `Process` (through `Setup`, or as an argument of its entry points); it never asks the
environment or the process group which process it is.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from wsml_fast.core.errors import WsmlError


def resolve_precision(precision: str, device: torch.device) -> str:
    """`auto` means fp16 mixed precision on CUDA and fp32 elsewhere; fp16 on a CPU is refused."""
    if precision == "auto":
        return "fp16" if device.type == "cuda" else "fp32"
    if precision == "fp16" and device.type != "cuda":
        raise WsmlError("--precision fp16 needs a CUDA GPU; on a CPU use bf16 or fp32")
    return precision


@dataclass(frozen=True)
class Process:
    """One process of a job: `rank` of `world_size` (torchrun's; 0 of 1 alone), its device and its resolved
    precision (fp32, fp16 or bf16). Process 0 alone writes the run folder and speaks."""

    rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")
    precision: str = "fp32"

    @property
    def writes(self) -> bool:
        """Whether this process writes files and prints: process 0 of a data-parallel job, or the only one."""
        return self.rank == 0

    @property
    def parallel(self) -> bool:
        """Whether this process is one of several training one model together."""
        return self.world_size > 1

    def with_precision(self, precision: str) -> Process:
        """The same process running at `precision` (auto, fp32, fp16 or bf16), resolved for its device."""
        return dataclasses.replace(self, precision=resolve_precision(precision, self.device))


def launched(precision: str = "auto") -> Process:
    """This process as it was launched: torchrun's RANK, WORLD_SIZE and LOCAL_RANK (one process without them);
    its own GPU (LOCAL_RANK's) when there is one, else the CPU."""
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")
    rank, world_size = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    return Process(rank, world_size, device).with_precision(precision)


@contextlib.contextmanager
def process_switches(process: Process, autotune: bool = False) -> Iterator[Process]:
    """The process-wide switches a command runs under, each put back as it was on leaving: the process's GPU as
    the current CUDA device (collectives and allocations use it), and with `autotune` cuDNN's autotuned
    convolutions (for training, whose inputs keep one shape all run). (The command line's `friendly` wrapper
    silences the libraries' deprecation notices for the whole command, imports included.)"""
    cuda = process.device.type == "cuda"
    previous_device = torch.cuda.current_device() if cuda else None
    previous_benchmark = torch.backends.cudnn.benchmark
    try:
        if cuda:
            torch.cuda.set_device(process.device)
            torch.backends.cudnn.benchmark = autotune or previous_benchmark
        yield process
    finally:
        torch.backends.cudnn.benchmark = previous_benchmark
        if cuda and not process.parallel:  # a data-parallel process ends on its own GPU: going back to another
            torch.cuda.set_device(previous_device)  # would make a CUDA context there, on another process's GPU

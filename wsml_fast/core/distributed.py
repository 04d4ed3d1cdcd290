"""The collectives of a data-parallel run (launched by `torchrun` or `accelerate launch`) and how its items are
shared: all-gathers of a batch's losses, item indices or label rows for the schemes, on the CPU with gloo or on
the GPU with NCCL, whichever backend the process group has; each process's part of every global batch and of an
evaluation set. The fastai side (the trainer and the loaders that use these) is `wsml_fast.training.parallel`.

With one process (no `torchrun`), every function here is the identity and no process group is touched. Which
process this is, and whether it writes, is decided once at the command line (`wsml_fast.core.process.Process`); the
collectives here only ask the process group they work in.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import numpy as np
import torch
import torch.distributed as dist

from wsml_fast.core.errors import WsmlError, one_line
from wsml_fast.core.process import Process


def in_group() -> bool:
    """Whether this process is in a process group of several (made when a data-parallel fit starts)."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    """This process's place in its process group (0 outside one): for the collectives' bookkeeping, such as
    finding its own rows among gathered ones."""
    return dist.get_rank() if in_group() else 0


def world_size() -> int:
    """Processes in this process's group (1 outside one): for the collectives' bookkeeping."""
    return dist.get_world_size() if in_group() else 1


def _collective_device(tensor: torch.Tensor) -> torch.device:
    """NCCL moves CUDA tensors only; gloo any."""
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else tensor.device


def wait_for_main() -> None:
    """Every process waits here until all arrive: files process 0 alone writes (best weights, scheme state)
    are complete before the others read them. Nothing to wait for with one process."""
    if in_group():
        dist.barrier()


@contextlib.contextmanager
def decided_together(process: Process) -> Iterator[None]:
    """A step before training whose outcome every process of a data-parallel run shares. When the block fails on
    any process (process 0 alone claims the run folder, and alone writes it), every process raises at once, the
    failing ones their own error and the others the first one's, so that all exit with one decision; otherwise
    a process that went on would wait in the first collective until the launcher killed it. With one process the
    block runs as it is. The process group is made here the first time (the trainer's Accelerator then uses it)."""
    if not process.parallel:
        yield
        return
    failure: Exception | None = None
    try:
        yield
    except Exception as exc:  # noqa: BLE001 - any failure: the other processes must hear of it
        failure = exc
    if not dist.is_initialized():
        try:
            dist.init_process_group("nccl" if process.device.type == "cuda" else "gloo")
        except (ValueError, RuntimeError) as exc:  # WORLD_SIZE set by hand, without the rest of a launcher's
            raise WsmlError(
                f"WORLD_SIZE={process.world_size} but this process cannot join the others ({one_line(exc)}); "
                "launch with torchrun, or unset WORLD_SIZE for one process"
            ) from None
    said: list[str | None] = [None] * process.world_size
    dist.all_gather_object(said, None if failure is None else one_line(failure))
    if failure is not None:
        raise failure
    first = next(((rank, line) for rank, line in enumerate(said) if line is not None), None)
    if first is not None:
        raise WsmlError(f"process {first[0]} of this data-parallel run stopped before training: {first[1]}")


def all_gather(tensor: torch.Tensor) -> torch.Tensor:
    """The tensors of every process (same shape on each), concatenated along dim 0 in rank order."""
    if not in_group():
        return tensor
    moved = tensor.to(_collective_device(tensor)).contiguous()
    parts = [torch.empty_like(moved) for _ in range(world_size())]
    dist.all_gather(parts, moved)
    return torch.cat(parts).to(tensor.device)


def all_gather_varying(tensor: torch.Tensor) -> torch.Tensor:
    """Like `all_gather` for tensors whose first dimension differs between processes (padded, then cut)."""
    if not in_group():
        return tensor
    sizes = all_gather(torch.tensor([len(tensor)], device=tensor.device)).tolist()
    padded = torch.zeros((max(sizes), *tensor.shape[1:]), dtype=tensor.dtype, device=tensor.device)
    padded[: len(tensor)] = tensor
    parts = all_gather(padded).split(max(sizes))
    return torch.cat([part[:size] for part, size in zip(parts, sizes, strict=True)])


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    if not in_group():
        return tensor
    moved = tensor.to(_collective_device(tensor)).clone()
    dist.all_reduce(moved)
    return moved.to(tensor.device)


def broadcast_from_main(tensor: torch.Tensor) -> torch.Tensor:
    if not in_group():
        return tensor
    moved = tensor.to(_collective_device(tensor)).clone()
    dist.broadcast(moved, src=0)
    return moved.to(tensor.device)


def global_batch_order(order: np.ndarray, bs: int, processes: int, process: int) -> np.ndarray:
    """This process's items of a shuffled `order`: its slice of `bs` items in each full global batch of
    `bs` x `processes` items (the incomplete last global batch is dropped, as one process drops its last)."""
    global_bs = bs * processes
    full = len(order) // global_bs * global_bs
    batches = np.asarray(order[:full]).reshape(-1, processes, bs)
    return batches[:, process].reshape(-1)


def shard(n: int, processes: int, process: int) -> np.ndarray:
    """This process's part of n evaluation items: contiguous, no padding, sizes differing by at most one."""
    bounds = np.linspace(0, n, processes + 1).round().astype(int)
    return np.arange(bounds[process], bounds[process + 1])


def lost_a_process(exc: BaseException) -> bool:
    """Whether `exc` (or what it was raised from) is a collective that failed because another process of the run
    is gone: gloo and NCCL report it as RuntimeErrors naming themselves."""
    while exc is not None:
        if isinstance(exc, dist.DistError) or any(word in str(exc) for word in ("gloo", "NCCL", "Connection reset")):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def bare(model: torch.nn.Module) -> torch.nn.Module:
    """The model inside a DistributedDataParallel wrapper (scoring on one process must not use the wrapper, whose
    forward may synchronise buffers with the others)."""
    return getattr(model, "module", model)

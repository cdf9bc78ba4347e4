"""Process-group set-up and tear-down for `torchrun` (the `distributed` context manager; NCCL on CUDA, gloo on CPU),
seeding, and small collectives."""
from __future__ import annotations

import os
import random
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch
import torch.distributed as dist

from allspark.errors import ConfigError, DeviceError


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def resolve_device(device: str | torch.device = "auto", index: int | None = None) -> torch.device:
    """What `--device` means everywhere: auto (CUDA when available, else the CPU), cpu, or cuda (`cuda:N`, or
    device `index` when given); CUDA asked for on a machine without it is an error."""
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    resolved = torch.device(device)
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            reason = "this torch is built without CUDA" if torch.version.cuda is None else "no GPU is visible"
            raise DeviceError(f"--device {device}: CUDA is not available ({reason}); use --device cpu or auto")
        if index is not None:
            resolved = torch.device("cuda", index)
    return resolved


def init_distributed(device: str = "auto") -> DistInfo:
    """Join the process group when launched by torchrun (WORLD_SIZE > 1), else run single-process;
    `device` as in `resolve_device`, each process on the GPU of its LOCAL_RANK."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device, local_rank)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo", rank=rank, world_size=world_size)
    return DistInfo(rank, world_size, local_rank, dev)


@contextmanager
def distributed(device: str = "auto") -> Iterator[DistInfo]:
    """`with distributed(device) as info:` joins torchrun's process group for the block (init_distributed) and
    leaves it after, however the block ends, only when this block joined it: a caller's group is left to the caller.
    A DDP wrapper must be dropped inside the block (the trainers' `close`): one freed after it would free the gloo
    group from a thread that holds the GIL while gloo's worker thread waits for the GIL to drop its last work, a
    deadlock at exit (pytorch/pytorch#56297; 3 and then 5 of 12 two-process pretrainings under load hung so)."""
    joined_before = is_initialized()
    info = init_distributed(device)
    try:
        yield info
    finally:
        if not joined_before and is_initialized():
            dist.destroy_process_group()


def is_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum `tensor` over ranks in place (no-op single-process); returns it."""
    if is_initialized():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def max_over_ranks(value: int) -> int:
    """The largest of every rank's `value`, on every rank (`value` itself single-process)."""
    if not is_initialized():
        return value
    box = torch.tensor([value], device="cuda" if dist.get_backend() == "nccl" else "cpu")
    dist.all_reduce(box, op=dist.ReduceOp.MAX)
    return int(box.item())


def broadcast_object(obj, src: int = 0):
    """Rank `src`'s Python object on every rank (no-op single-process)."""
    if not is_initialized():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def on_main(info: DistInfo, job):
    """Run `job` on rank 0 only and return its result there; when it fails, every rank raises (rank 0 the
    error itself, the others a ConfigError with its message), so no rank waits for a step that never comes."""
    result, failure = None, None
    if info.is_main:
        try:
            result = job()
        except Exception as err:  # re-raised below, once the other ranks have its message
            failure = err
    message = broadcast_object(None if failure is None else str(failure))
    if failure is not None:
        raise failure
    if message is not None:
        raise ConfigError(f"rank 0: {message}")
    return result


def all_gather_object(obj) -> list:
    """Every rank's Python object, in rank order ([obj] single-process)."""
    if not is_initialized():
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def derive_seeds(count: int, *parts: int) -> np.ndarray:
    """`count` 32-bit seeds from any parts (run seed, stream, rank, epoch, iteration): NumPy's SeedSequence hashes
    them, so unlike sums (seed 1 + rank 0 = seed 0 + rank 1) different parts never share a stream."""
    return np.random.SeedSequence([int(part) for part in parts]).generate_state(count)


def derive_seed(*parts: int) -> int:
    """One seed from `parts`, as derive_seeds: the one rule for every child seed of the package."""
    return int(derive_seeds(1, *parts)[0])


def seed_everything(seed: int, rank: int = 0) -> None:
    """Seed Python, NumPy and torch with derive_seed(seed, rank): reproducible, and ranks draw different crops."""
    value = derive_seed(seed, rank)
    random.seed(value)
    np.random.seed(value % 2**32)
    torch.manual_seed(value)


def get_rng_state() -> dict:
    """Every RNG the loop draws from, as plain types and tensors (readable with weights_only=True)."""
    np_state = np.random.get_state()
    state = {"python": random.getstate(), "numpy_keys": torch.from_numpy(np_state[1].astype(np.int64)),
             "numpy_pos": int(np_state[2]), "numpy_gauss": [int(np_state[3]), float(np_state[4])],
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict) -> None:
    """Restore the RNGs saved by get_rng_state."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    has_gauss, cached = state["numpy_gauss"]
    np.random.set_state(("MT19937", state["numpy_keys"].numpy().astype(np.uint32), state["numpy_pos"], has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def restore_rank_rng(saved: list[dict], info: DistInfo, seed: int, iteration: int) -> None:
    """This rank's RNGs from a checkpoint's per-rank states; saved by another world size: fresh ones derived from
    (seed, iteration), the same on every run that resumes there."""
    if len(saved) == info.world_size:
        set_rng_state(saved[info.rank])
    else:
        seed_everything(derive_seed(seed, iteration), info.rank)

"""One generation on several processes with torch.distributed (launched by ``torchrun``).

``torchrun --standalone --nproc-per-node=N -m spherediff_core generate ...`` (or the
worker, ``-m spherediff_core.worker``) starts N processes that share one generation:

* every rank loads the model (``cuda:LOCAL_RANK`` on a GPU machine) and holds the same
  sphere latents (the noise is drawn on the CPU from the seed);
* at every step each rank denoises its contiguous share of the views
  (:meth:`DistContext.shard`); the fused numerators and weight sums are all-reduced, every
  rank takes the scheduler step (multistep solvers keep their history on every rank) and
  rank 0's latents are broadcast, so the ranks stay bit-identical whatever the hardware;
* decoding is sharded the same way and the ERP canvases are summed onto rank 0, which
  alone writes files and reports progress;
* a cancel on any rank stops all (a flag all-reduced before every round of view batches);
  a rank that dies makes the others' next collective fail (or time out after
  ``SPHEREDIFF_DIST_TIMEOUT_S``, default 1800 s), which ends the job with an error.

Backends: gloo for CPU tensors (the flags, the job text) and, where CUDA is available,
NCCL for the GPU tensors (``"cpu:gloo,cuda:nccl"``). Nothing here is a scheduler of its
own: the rendezvous, the process launch and restarts are torchrun's.
"""

from __future__ import annotations

import datetime
import logging
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .errors import DistributedError

if TYPE_CHECKING:
    import torch

__all__ = ["DistContext", "DistributedError", "check_device", "init_from_env", "launched"]

logger = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 1800.0
TIMEOUT_ENV = "SPHEREDIFF_DIST_TIMEOUT_S"


def launched() -> bool:
    """True in a process started by torchrun with more than one process in all."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1")) > 1
    except ValueError:
        return False


def _timeout_s() -> float:
    text = os.environ.get(TIMEOUT_ENV)
    if not text:
        return DEFAULT_TIMEOUT_S
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise DistributedError(
            f"{TIMEOUT_ENV}={text!r}: give the seconds a rank waits for the others, e.g. 600"
        )
    return value


@dataclass
class DistContext:
    """This process's place in the run, and the few collectives the engine needs.

    Every collective turns a failure of the transport (a rank that died, a timeout) into
    a :class:`DistributedError` that says so.
    """

    rank: int
    world_size: int
    local_rank: int
    backend: str
    timeout_s: float

    @property
    def is_root(self) -> bool:
        return self.rank == 0

    # --- sharding -------------------------------------------------------------------------
    def shard_sizes(self, n: int) -> list[int]:
        """Items per rank when n items are split into contiguous, balanced blocks."""
        base, extra = divmod(n, self.world_size)
        return [base + (1 if r < extra else 0) for r in range(self.world_size)]

    def shard(self, n: int) -> torch.Tensor:
        """This rank's block of ``range(n)``, (n_r,) int64."""
        import torch

        sizes = self.shard_sizes(n)
        start = sum(sizes[: self.rank])
        return torch.arange(start, start + sizes[self.rank])

    def rounds(self, n: int, batch: int) -> int:
        """Batches of ``batch`` the busiest rank needs for its share of n items: every rank
        runs this many rounds, so the per-round collectives line up."""
        return -(-max(self.shard_sizes(n)) // max(1, batch))

    def describe(self, n_views: int) -> dict[str, Any]:
        """The sidecar's ``distributed`` block."""
        return {
            "world_size": self.world_size,
            "backend": self.backend,
            "views_per_rank": self.shard_sizes(n_views),
        }

    # --- collectives ----------------------------------------------------------------------
    def _run(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (RuntimeError, ValueError) as exc:  # DistBackendError, timeouts, resets
            raise DistributedError(
                f"the distributed run lost a process while {what} (rank {self.rank} of "
                f"{self.world_size}): {exc}. Another rank failed or was stopped; see its "
                "messages above"
            ) from exc

    def any(self, flag: bool) -> bool:
        """True on every rank if ``flag`` is True on any (a cancel reaches them all)."""
        import torch
        import torch.distributed as tdist

        value = torch.tensor([1 if flag else 0], dtype=torch.int32)  # CPU: gloo
        self._run("agreeing on a cancel", tdist.all_reduce, value, tdist.ReduceOp.MAX)
        return bool(value.item())

    def min_int(self, value: int) -> int:
        """The smallest ``value`` over all ranks (e.g. the free memory of the smallest GPU)."""
        import torch
        import torch.distributed as tdist

        t = torch.tensor([int(value)], dtype=torch.int64)  # CPU: gloo
        self._run("agreeing on a size", tdist.all_reduce, t, tdist.ReduceOp.MIN)
        return int(t.item())

    def barrier(self) -> None:
        self.any(False)

    def all_sum_(self, *tensors: torch.Tensor) -> None:
        """Sum tensors over all ranks, in place."""
        import torch.distributed as tdist

        for t in tensors:
            self._run("summing the views' results", tdist.all_reduce, t, tdist.ReduceOp.SUM)

    def sum_to_root_(self, *tensors: torch.Tensor) -> None:
        """Sum tensors onto rank 0, in place (other ranks' copies are left undefined)."""
        import torch.distributed as tdist

        for t in tensors:
            self._run("gathering the panorama", tdist.reduce, t, 0, tdist.ReduceOp.SUM)

    def broadcast_(self, tensor: torch.Tensor) -> None:
        """Rank 0's tensor on every rank, in place."""
        import torch.distributed as tdist

        self._run("sharing the latents", tdist.broadcast, tensor, 0)

    def broadcast_text(self, text: str | None) -> str | None:
        """Rank 0's text (None allowed) on every rank: the job, as UTF-8 bytes."""
        import torch
        import torch.distributed as tdist

        data = b"" if text is None else text.encode("utf-8")
        size = torch.tensor([len(data) if text is not None else -1], dtype=torch.int64)
        self._run("sharing the job", tdist.broadcast, size, 0)
        n = int(size.item())
        if n < 0:
            return None
        buf = torch.zeros(n, dtype=torch.uint8)
        if self.is_root:
            buf.copy_(torch.frombuffer(bytearray(data), dtype=torch.uint8))
        if n:
            self._run("sharing the job", tdist.broadcast, buf, 0)
        return text if self.is_root else buf.numpy().tobytes().decode("utf-8")

    def device(self, device: torch.device) -> torch.device:
        """The device this rank computes on: ``cuda`` becomes ``cuda:LOCAL_RANK``."""
        import torch

        if device.type == "cuda" and device.index is None:
            return torch.device("cuda", self.local_rank)
        return device

    def close(self) -> None:
        import torch.distributed as tdist

        if tdist.is_initialized():
            tdist.destroy_process_group()


def check_device(device: str) -> None:
    """Refuse a generation device a run on several processes cannot use."""
    if device == "mps":
        raise DistributedError(
            "device 'mps': a run on several processes needs CUDA GPUs (NCCL) or the CPU "
            "(gloo); use device 'cpu', or one process"
        )
    if device.startswith("cuda:"):
        raise DistributedError(
            f"device {device!r} under torchrun: every rank would use that one GPU; use "
            "device 'cuda' or 'auto' (each rank takes cuda:LOCAL_RANK), and choose the GPUs "
            "with CUDA_VISIBLE_DEVICES"
        )


def init_from_env(device: str = "auto") -> DistContext | None:
    """Join the run torchrun started (None when this is a single process).

    ``device``: the generation's device option; 'cpu' or 'mps' use gloo alone, anything
    else uses NCCL for GPU tensors when this PyTorch has CUDA and NCCL.
    """
    if not launched():
        return None
    import torch
    import torch.distributed as tdist

    rank = int(os.environ["RANK"])
    world_size = int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    timeout_s = _timeout_s()
    check_device(device)
    gpu = device != "cpu" and torch.cuda.is_available()
    if gpu and not tdist.is_nccl_available():
        raise DistributedError(
            "several GPUs need NCCL, which this PyTorch lacks (NCCL is Linux-only); run one "
            "process, or use device 'cpu' (gloo)"
        )
    if gpu and local_rank >= torch.cuda.device_count():
        raise DistributedError(
            f"local rank {local_rank} has no GPU: torchrun started more processes per node "
            f"than the {torch.cuda.device_count()} GPU(s) this process sees; use "
            "--nproc-per-node at most that many"
        )
    backend = "cpu:gloo,cuda:nccl" if gpu else "gloo"
    if gpu:
        torch.cuda.set_device(local_rank)
    if not tdist.is_initialized():
        try:
            tdist.init_process_group(
                backend=backend,
                timeout=datetime.timedelta(seconds=timeout_s),
                rank=rank,
                world_size=world_size,
            )
        except (RuntimeError, ValueError) as exc:
            raise DistributedError(
                f"could not join the distributed run (rank {rank} of {world_size}, "
                f"{backend}): {exc}. Check torchrun's --rdzv-endpoint / MASTER_ADDR and "
                "MASTER_PORT, and that every node runs the same command"
            ) from exc
    logger.info("rank %d of %d (%s, local rank %d)", rank, world_size, backend, local_rank)
    return DistContext(rank, world_size, local_rank, backend, timeout_s)

"""One run in several processes: the process group that `torchrun` sets up, and the few
collective steps a run needs.

Under torchrun every process runs the same command with RANK, WORLD_SIZE, LOCAL_RANK and
LOCAL_WORLD_SIZE set. `joined` makes the process group (gloo on CPU, NCCL on CUDA, the device
`cuda:LOCAL_RANK`) and returns a `Group`; a plain process gets `Group()`, a group of one, whose
collectives return at once. Rank 0, the primary, decides what must be decided once (the run
folder, the head, auto's choice) and is the only one that writes the run folder; the others
print nothing but errors.

What is split across ranks, and how it is put back together:
- features for the logistic-regression head (linear, auto, LP-FT's probe): sharded, each rank
  holding only its share (`features.FeaturePass(sharded=True)`); the head's cross-validation,
  standardization and fit are data-parallel (`sum` of loss and gradient, `blocks` to pass rows
  round for the near-copy groups), evaluation gathers logits, not features;
- otherwise uncached features (`features.FeaturePass`), decoded images (`data.datasets.decode_all`)
  and a distillation teacher's logits: each rank computes its share, and the results are exchanged
  over the group (`all_gather`), so nodes need not share a filesystem;
- network training: DDP (`replicate`) over a `DistributedSampler`; validation is sharded and its
  logits gathered, so every rank measures the same accuracy and takes the same decisions.
"""

from __future__ import annotations

import contextlib
import datetime
import os
from dataclasses import dataclass
from typing import Any, Callable, Iterator, TypeVar

from .errors import UserError

T = TypeVar("T")

# The environment torchrun gives each worker.
ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE")
# How long a collective may wait for a rank before the group gives up. A failed rank ends the
# others at once (torchrun stops the whole group when one worker exits with an error); what a
# rank legitimately waits for is the primary's work alone: an epoch-trained head's fit on every
# feature, which on a million images can take tens of minutes (README, Scaling out).
TIMEOUT = datetime.timedelta(hours=2)


def under_torchrun() -> bool:
    return all(name in os.environ for name in ENV)


def is_primary_process() -> bool:
    """Not under torchrun, or its rank 0 (known before any process group exists)."""
    return not under_torchrun() or os.environ["RANK"] == "0"


@dataclass(frozen=True)
class Group:
    """This process's place in the run: rank, world size, and on its node local rank and size."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    local_world: int = 1
    backend: str | None = None  # "gloo" or "nccl"; None: no process group

    @property
    def primary(self) -> bool:
        """The rank that decides and writes (rank 0)."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1

    @property
    def writes_cache(self) -> bool:
        """Whether this rank writes what the group computed into its cache: one rank per node
        (nodes need not share a filesystem; the ranks of one node share theirs)."""
        return self.local_rank == 0

    def describe(self) -> dict:
        """For results.json."""
        return {"world_size": self.world, "nodes": max(1, self.world // max(1, self.local_world)),
                "processes_per_node": self.local_world, "backend": self.backend}

    # -- collectives (no-ops in a group of one) ---------------------------------------------------
    def barrier(self) -> None:
        if self.distributed:
            import torch.distributed as dist

            dist.barrier()

    def broadcast(self, obj: T) -> T:
        """The primary's `obj`, on every rank."""
        if not self.distributed:
            return obj
        import torch.distributed as dist

        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def all_gather(self, obj: Any) -> list:
        """Every rank's `obj`, in rank order, on every rank."""
        if not self.distributed:
            return [obj]
        import torch.distributed as dist

        out: list = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def gather(self, obj: Any) -> list | None:
        """Every rank's `obj`, in rank order, on the primary; None on the others."""
        if not self.distributed:
            return [obj]
        import torch.distributed as dist

        out: list | None = [None] * self.world if self.primary else None
        dist.gather_object(obj, out, dst=0)
        return out

    def blocks(self, obj: Any) -> Iterator[Any]:
        """Every rank's `obj`, one rank's at a time, in rank order, on every rank: what a search
        over rows spread across the group passes round (memory: one rank's rows at a time, not
        all of them as `all_gather` holds)."""
        if not self.distributed:
            yield obj
            return
        import torch.distributed as dist

        for source in range(self.world):
            box = [obj if source == self.rank else None]
            dist.broadcast_object_list(box, src=source)
            yield box[0]

    def sum(self, values):
        """The element-wise sum of every rank's float64 NumPy array `values` (the same shape on
        every rank), the same result on every rank; in a group of one, `values` as they are. On
        CUDA (nccl) the reduction runs on the rank's GPU. What the data-parallel head sums
        (`logistic.ShardedLogistic`)."""
        if not self.distributed:
            return values
        import numpy as np
        import torch
        import torch.distributed as dist

        t = torch.from_numpy(np.ascontiguousarray(values, dtype=np.float64))
        if self.backend == "nccl":
            t = t.to(f"cuda:{self.local_rank}")
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t.cpu().numpy()

    def decide(self, fn: Callable[[], T]) -> T:
        """`fn()` run once, on the primary, and its result on every rank. An error it raises (a
        `UserError`) is raised on every rank, so none waits for an answer that will not come."""
        if not self.distributed:
            return fn()
        result: Any = None
        if self.primary:
            try:
                result = (True, fn())
            except Exception as exc:  # noqa: BLE001 - re-raised below, on every rank
                result = (False, exc)
        ok, value = self.broadcast(result)
        if not ok:
            raise value
        return value

    def union(self, items: list[tuple]) -> list[tuple]:
        """Every rank's `items` (what its cache lacks), merged and sorted: the same list on every
        rank, to be shared out (`share`). In a group of one: `items` as they are."""
        if not self.distributed:
            return items
        return sorted({tuple(t) for part in self.all_gather(items) for t in part})

    def share(self, n: int) -> range:
        """This rank's items of `n` (every world-th, from its rank)."""
        return range(self.rank, n, self.world)

    def node_share(self, n: int) -> range:
        """This rank's items of `n` among the ranks of its node (for node-local work such as
        filling the node's decode cache)."""
        return range(self.local_rank, n, self.local_world)

    def gather_rows(self, mine: dict[int, Any]) -> dict[int, Any]:
        """Every rank's {index: value}, merged."""
        merged: dict[int, Any] = {}
        for part in self.all_gather(mine):
            merged.update(part)
        return merged

    # -- devices and models -----------------------------------------------------------------------
    def device(self, requested: str) -> str:
        """The device this rank uses: `cuda:LOCAL_RANK` where CUDA is asked for (or auto and
        available) in a group; the request as it is otherwise."""
        if self.distributed and requested in ("auto", "cuda"):
            import torch

            if torch.cuda.is_available():
                return f"cuda:{self.local_rank}"
        return requested

    def replicate(self, device) -> Callable:
        """`wrap(model) -> module to train`: the model itself in a group of one, else the model
        in DDP. A new DDP is made when the set of trainable parameters changes (gradual
        unfreezing), since DDP reduces the gradients of the parameters trainable when it was
        made."""
        if not self.distributed:
            return lambda model: model
        from torch.nn.parallel import DistributedDataParallel

        made: dict = {}

        def wrap(model):
            trainable = tuple(p.requires_grad for p in model.parameters())
            if made.get("key") != trainable:
                ids = [device.index] if device.type == "cuda" else None
                made["key"], made["ddp"] = trainable, DistributedDataParallel(model, device_ids=ids)
            return made["ddp"]

        return wrap


def sync_batchnorm(model) -> None:
    """Every BatchNorm of `model` (torch's and timm's) made a SyncBatchNorm, in place: batch
    statistics computed over the whole group's batch. Torch runs SyncBatchNorm on GPUs only
    (`check_sync_bn` refuses it on CPU first)."""
    from timm.layers import convert_sync_batchnorm

    convert_sync_batchnorm(model)


def check_sync_bn(sync_bn: bool | None, group: Group, device) -> None:
    if sync_bn and group.distributed and device.type != "cuda":
        raise UserError("--sync-bn synchronises BatchNorm across GPUs (torch's SyncBatchNorm runs on CUDA only); "
                        "on CPU each process normalizes its own batch: drop --sync-bn")


@contextlib.contextmanager
def joined(device: str = "auto") -> Iterator[Group]:
    """The process group of this run (made here, ended afterwards), or `Group()` outside torchrun."""
    if not under_torchrun() or int(os.environ["WORLD_SIZE"]) == 1:
        yield Group()
        return
    import torch
    import torch.distributed as dist

    local_rank = int(os.environ["LOCAL_RANK"])
    cuda = device in ("auto", "cuda") and torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(local_rank)
    backend = "nccl" if cuda else "gloo"
    made = not dist.is_initialized()
    if made:
        dist.init_process_group(backend, timeout=TIMEOUT)
    group = Group(dist.get_rank(), dist.get_world_size(), local_rank, int(os.environ["LOCAL_WORLD_SIZE"]), backend)
    try:
        yield group
    finally:
        if made:
            dist.destroy_process_group()

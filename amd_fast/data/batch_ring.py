"""Batch buffers shared by the eager loader's workers and its main process, handed out without a copy.

The main process allocates them in shared memory before its DataLoader workers fork: ``slots`` buffers per
worker, each its own storage, and one flag per buffer in shared memory. A worker writes a batch into one of its
free buffers (flag 0 -> 1) and sends only the buffer's number; the main process hands that buffer out as the
batch, and frees it (flag 1 -> 0) once nothing but the ring holds its storage any more: the batch, and every view
of it, was dropped (torch counts a storage's users). Each flag has one writer per transition (the worker sets,
the main process clears), so no lock is needed.

Why (issue 17): the main process used to copy every batch out of a worker-private ring before asking for the
next (38 MB per batch of 16 224-px clips; with the shared-memory handle that came with every batch, about 1.1 ms
of its CPU per clip, over a tenth of the loader's). Now a batch costs it a few hundred bytes of pickle.

A consumer that keeps many batches alive (``list(loader)``) leaves a worker with no free buffer; the worker then
sends a fresh shared-memory buffer with the batch, which nobody reuses, so a held batch is never overwritten.
"""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import torch


def _users(t: torch.Tensor) -> int:
    """How many tensors (and numpy arrays) use ``t``'s storage."""
    return torch._C._storage_Use_Count(t.untyped_storage()._cdata)


class BatchRing:
    """``workers x slots`` uint8 buffers of ``shape`` in shared memory (see the module doc). Pages are touched
    only when a batch is written, and a worker takes its lowest free buffer, so the spare ones stay untouched
    while the consumer keeps up."""

    def __init__(self, workers: int, slots: int, shape: Sequence[int]):
        self.shape = tuple(int(x) for x in shape)
        self.buffers: List[List[torch.Tensor]] = [
            [torch.empty(self.shape, dtype=torch.uint8).share_memory_() for _ in range(slots)] for _ in range(workers)]
        self.busy = torch.zeros((workers, slots), dtype=torch.uint8).share_memory_()
        self._busy_np = None  # per process: a numpy view of ``busy`` (cheap element access)
        self._baseline = _users(self.buffers[0][0])  # the ring's own references
        self._held: List[Tuple[int, int]] = []  # main process: buffers handed out, not freed yet

    @staticmethod
    def usable() -> bool:
        """Whether this torch tells how many tensors use a storage (a private API, there since torch 1.x); without
        it the workers send a fresh buffer with every batch."""
        return hasattr(torch._C, "_storage_Use_Count")

    def __getstate__(self):  # a spawned worker gets the shared tensors, and makes its own view of the flags
        return {**self.__dict__, "_busy_np": None}

    def _flags(self):
        if self._busy_np is None:
            self._busy_np = self.busy.numpy()
        return self._busy_np

    def take(self, worker: int) -> Optional[Tuple[int, torch.Tensor]]:
        """Worker side: its lowest free buffer, marked taken, or None when all are held."""
        flags = self._flags()[worker]
        for slot in range(flags.shape[0]):
            if flags[slot] == 0:
                flags[slot] = 1
                return slot, self.buffers[worker][slot]
        return None

    def untake(self, worker: int, slot: int) -> None:
        """Worker side: a buffer taken but never sent (the batch failed) is free again."""
        self._flags()[worker][slot] = 0

    def receive(self, worker: int, slot: int, rows: int) -> torch.Tensor:
        """Main side: the batch a worker wrote into buffer ``slot`` (its first ``rows`` clips). Frees, first, the
        buffers handed out earlier that nothing uses any more."""
        self.free_unused()
        self._held.append((worker, slot))
        return self.buffers[worker][slot][:rows]

    def free_unused(self) -> None:
        flags, kept = self._flags(), []
        for worker, slot in self._held:
            if _users(self.buffers[worker][slot]) <= self._baseline:
                flags[worker, slot] = 0
            else:
                kept.append((worker, slot))
        self._held = kept

    def reset(self) -> None:
        """Main side, when the workers were replaced: a buffer a dead worker had taken but never sent is free again
        (the ones handed out stay held)."""
        flags = self._flags()
        flags[:] = 0
        for worker, slot in self._held:
            flags[worker, slot] = 1

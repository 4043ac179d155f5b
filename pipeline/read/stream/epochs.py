"""Epochs, passes and resumption of a :class:`~pipeline.read.stream.StreamingDataset`, kept in the main process.

State for resumption is a handful of numbers (:meth:`Resumption.state_dict`) kept in the main
process, where the training loop counts what it has received (the dataset's ``track``); DataLoader
workers hold only copies of the dataset, so they learn the epoch and start of a pass from a
two-number shared tensor that the main process writes (:meth:`Resumption.next_pass`).

:class:`Resumption` is an object the dataset holds, not a mix-in: everything it needs comes in
through its constructor (the order's identity, batching) or as an argument (the world size, which
the dataset resolves). The arithmetic is :mod:`pipeline.read.stream.order`'s.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch

from pipeline.errors import UsageError
from pipeline.read.stream.order import consumed_position, rank_share
from pipeline.read.stream.state import OrderIdentity, check_state, state_record


class Resumption:
    """The epoch, the position of the job in it, and the state that saves them."""

    def __init__(self, identity: OrderIdentity, batch_size: int | None, drop_last: bool, world_size: int) -> None:
        self.identity = identity
        self._batch_size, self._drop_last = batch_size, drop_last
        self.epoch = 0
        self._start = 0  # global position where the current (or next) pass starts
        self._seen = 0  # samples this rank has received in the current pass (counted by count)
        self._pass_world = world_size  # the world size the current pass runs on
        self._finished = False  # the current pass ran to its end
        self._loader_exact = True  # False: workers batch their own samples, position is not a prefix
        # (epoch, start of the next pass), read by DataLoader workers when a pass begins: persistent
        # workers keep their copy of the dataset across epochs, so they learn these from here
        self._next_pass = torch.zeros(2, dtype=torch.int64).share_memory_()

    @property
    def samples(self) -> int:
        return self.identity.samples

    @property
    def position(self) -> int:
        """Positions of this epoch's global order consumed by the whole job so far."""
        return consumed_position(self._start, self._seen, self._pass_world, self.samples)

    @property
    def pass_start(self) -> int:
        """Where the next (or current) pass starts: the epoch's start once a pass has run to its end."""
        return 0 if self._finished else self._start

    def next_pass(self) -> tuple[int, int]:
        """``(epoch, start)`` of the pass a DataLoader worker begins, as the main process published them."""
        epoch, start = (int(x) for x in self._next_pass.tolist())
        return epoch, start

    def share(self, world_size: int) -> int:
        """Samples a rank yields in the next (or current) pass: the epoch, or what is left of it."""
        return rank_share(self.samples - self.pass_start, world_size, self._batch_size, self._drop_last)

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch (and so the order) of the next pass.

        Setting the epoch a pass is already in (for example one just loaded by :meth:`load_state_dict`)
        keeps its position, unless that pass has run to its end.
        """
        if epoch < 0:
            raise UsageError(f"epoch must be non-negative, got {epoch}")
        if epoch != self.epoch or self._finished:
            self.epoch, self._start, self._seen, self._finished = epoch, 0, 0, False
        self._publish()

    def begin(self, world_size: int, exact: bool) -> None:
        """A pass begins: the same epoch again after a finished one, else where the last one stopped.

        ``exact``: the samples received will form a prefix of the rank's order (see :meth:`state_dict`).
        """
        if self._finished:
            self._start, self._seen, self._finished = 0, 0, False
        else:
            self._start, self._seen = self.position, 0
        self._pass_world, self._loader_exact = world_size, exact
        self._publish()

    def count(self, samples: int) -> None:
        """The training loop received ``samples`` more samples of the current pass."""
        self._seen += samples

    def finish(self) -> None:
        self._finished = True
        self._publish()

    def state_dict(self, world_size: int, samples_seen: int | None = None) -> dict:
        """Where the job stands in its epoch: tiny, JSON-serialisable, the same on every rank.

        ``samples_seen``: samples this rank has received since the current pass started, when the
        loop did not count them (the dataset's ``track``).
        """
        world = self._pass_world if samples_seen is None else world_size
        if samples_seen is None:
            if not self._loader_exact:
                raise UsageError(
                    "DataLoader workers batch their own samples here, so the samples seen do "
                    "not form a prefix of the order: give the dataset batch_size=... for "
                    "exact resumption"
                )
            position = self.position
        else:
            position = consumed_position(self._start, samples_seen, world, self.samples)
        epoch = self.epoch
        done = rank_share(self.samples - position, world, self._batch_size, self._drop_last) == 0
        if (self._finished and samples_seen is None) or done:
            epoch, position = epoch + 1, 0
        return state_record(self.identity, epoch, int(position), world)

    def load_state_dict(self, state: Mapping[str, Any], world_size: int) -> None:
        """Continue where :meth:`state_dict` left off, on this job's world size and batch size."""
        epoch, position = check_state(state, self.identity)
        self.epoch, self._start, self._seen, self._finished = epoch, position, 0, False
        self._pass_world = world_size
        self._publish()

    def _publish(self) -> None:
        self._next_pass[0], self._next_pass[1] = self.epoch, self.pass_start

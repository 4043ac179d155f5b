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

from typing import Any, Iterable, Iterator, Mapping

import torch

from pipeline.errors import UsageError
from pipeline.read.items import samples_in
from pipeline.read.stream.order import consumed_position, rank_share
from pipeline.read.stream.state import OrderIdentity, SavedPosition, check_state, state_record


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
        self.tracking = False  # a pass counted by the dataset's track() is running
        self._ended_epoch: int | None = None  # the loaded state was saved as this epoch ended
        self._loaded = False  # a state was loaded and no pass has begun since
        self._selected: int | None = None  # the epoch set_epoch chose, no pass begun since
        # (epoch, start of the next pass, whether track counts it), read by DataLoader workers when a
        # pass begins: persistent workers keep their copy of the dataset across epochs, so they learn
        # these from here; and a 4th number a worker sets when it begins a pass that nothing counts
        self._next_pass = torch.zeros(4, dtype=torch.int64).share_memory_()

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
        epoch, start, tracked, _ = (int(x) for x in self._next_pass.tolist())
        if not tracked:
            self._next_pass[3] = 1
        return epoch, start

    def share(self, world_size: int) -> int:
        """Samples a rank yields in the next (or current) pass: the epoch, or what is left of it."""
        return rank_share(self.samples - self.pass_start, world_size, self._batch_size, self._drop_last)

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch (and so the order) of the next pass.

        Setting the epoch a pass is already in (for example one just loaded by :meth:`load_state_dict`)
        keeps its position, unless that pass has run to its end. Setting the epoch a loaded state
        was saved at the end of selects it as done (its pass yields nothing), so a loop that saved
        its own epoch number with the state neither skips the next epoch nor repeats this one.
        Setting another epoch than a loaded mid-epoch state's is a :class:`UsageError`: it would
        silently replay or skip that epoch's remaining samples.
        """
        if epoch < 0:
            raise UsageError(f"epoch must be non-negative, got {epoch}")
        loaded_mid_epoch = self._loaded and 0 < self._start < self.samples
        if epoch == self._ended_epoch and self._loaded and self._start == 0 and self.epoch == epoch + 1:
            self.epoch, self._start, self._seen, self._finished = epoch, self.samples, 0, False
        elif loaded_mid_epoch and epoch != self.epoch:
            raise UsageError(
                f"the loaded state is mid-way through epoch {self.epoch} (position {self._start} of "
                f"{self.samples}): call set_epoch({self.epoch}) to finish it first"
            )
        elif epoch != self.epoch or self._finished:
            self.epoch, self._start, self._seen, self._finished = epoch, 0, 0, False
        self._ended_epoch, self._loaded, self._selected = None, False, epoch
        self._publish()

    def begin(self, world_size: int, exact: bool, tracked: bool) -> None:
        """A pass begins: the same epoch again after a finished one, else where the last one stopped.

        ``exact``: the samples received will form a prefix of the rank's order (see :meth:`state_dict`).
        ``tracked``: the dataset's ``track`` counts it (else the dataset's own iterator, in this process).
        """
        if self._finished:
            self._start, self._seen, self._finished = 0, 0, False
        else:
            self._start, self._seen = self.position, 0
        self._pass_world, self._loader_exact = world_size, exact
        self.tracking, self._ended_epoch, self._loaded = tracked, None, False
        self._next_pass[3] = 0
        self._selected = None
        self._publish()

    def track(self, batches: Iterable[dict], world_size: int, next_epoch: bool = False) -> Iterator[dict]:
        """The items of ``batches`` (a DataLoader over the dataset), each counted as it is received.

        ``next_epoch``: a pass after one that ran to its end is of the next epoch, where
        :meth:`set_epoch` was not called in between (else it is of the same epoch again).
        """
        if next_epoch and self._finished:
            self.set_epoch(self.epoch + 1)
        loader_batch = getattr(batches, "batch_size", None)
        workers = getattr(batches, "num_workers", 0)
        if self._batch_size is not None and loader_batch is not None:
            raise UsageError("the dataset already batches: use DataLoader(ds, batch_size=None, ...)")
        exact = self._batch_size is not None or workers == 0 or loader_batch in (None, 1)
        self.begin(world_size, exact, tracked=True)
        try:
            yield from self.counted(batches)
        finally:
            self.tracking = False
            self._publish()

    def counted(self, items: Iterable[dict]) -> Iterator[dict]:
        """``items`` of the current pass, each counted before it is handed on (so a state saved on
        receiving one includes it); the pass finishes when they do."""
        for item in items:
            self.count(samples_in(item))
            yield item
        self.finish()

    def count(self, samples: int) -> None:
        """The training loop received ``samples`` more samples of the current pass."""
        self._seen += samples

    def finish(self) -> None:
        self._finished, self.tracking = True, False
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
            if self._next_pass[3] and not self.tracking:
                raise UsageError(
                    "DataLoader workers read this dataset and nothing here counted what the loop received: "
                    "iterate through pipeline.StreamingDataLoader or ds.track(loader), or give samples_seen=..."
                )
            position = self.position
        else:
            position = consumed_position(self._start, samples_seen, world, self.samples)
        epoch, ended = self.epoch, None
        done = rank_share(self.samples - position, world, self._batch_size, self._drop_last) == 0
        if (self._finished and samples_seen is None) or done:
            epoch, position, ended = epoch + 1, 0, epoch
        return state_record(self.identity, SavedPosition(epoch, int(position), ended), world)

    def load_state_dict(self, state: Mapping[str, Any], world_size: int) -> None:
        """Continue where :meth:`state_dict` left off, on this job's world size and batch size.

        Loaded after :meth:`set_epoch` chose an epoch (torchdata's ``StatefulDataLoader`` loads
        when iteration begins, after the loop's ``set_epoch``): if the state was saved as that
        epoch ended, the epoch is done (its pass yields nothing); otherwise the state decides.
        """
        saved = check_state(state, self.identity)
        selected = self._selected
        self.epoch, self._start, self._seen, self._finished = saved.epoch, saved.position, 0, False
        self._ended_epoch, self._loaded = saved.ended_epoch, True
        self._pass_world = world_size
        if selected is not None and saved.ended_epoch == selected:
            self.set_epoch(selected)
        self._publish()

    def _publish(self) -> None:
        self._next_pass[0], self._next_pass[1], self._next_pass[2] = self.epoch, self.pass_start, self.tracking

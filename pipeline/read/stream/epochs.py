"""Epochs, passes and resumption of a :class:`~pipeline.read.stream.StreamingDataset`, kept in the main process.

State for resumption is a handful of numbers (:meth:`EpochsAndResumption.state_dict`) kept in the
main process, where the training loop counts what it has received (:meth:`~EpochsAndResumption.track`);
DataLoader workers hold only copies of the dataset, so they learn the epoch and start of a pass
from a two-number shared tensor that the main process writes (``_next_pass``).
"""

from __future__ import annotations

import math
from typing import Any, Iterable, Iterator, Mapping

from pipeline.errors import UsageError
from pipeline.read.stream.order import consumed_position, rank_share
from pipeline.read.stream.state import OrderIdentity, check_state, state_record


class EpochsAndResumption:
    """The epoch, the position of the job in it, and the state that saves them, for the dataset.

    The dataset that mixes this in provides ``samples``, ``world_size``, ``batch_size``,
    ``drop_last``, ``split``, ``seed``, ``shuffle``, ``_keys_digest`` and the pass attributes its
    ``__init__`` sets (``_epoch``, ``_start``, ``_seen``, ``_pass_world``, ``_finished``,
    ``_next_pass``, ``_loader_exact``). The arithmetic is :mod:`pipeline.read.stream.order`'s.
    """

    @property
    def epoch(self) -> int:
        return self._epoch

    @property
    def position(self) -> int:
        """Positions of this epoch's global order consumed by the whole job so far."""
        return consumed_position(self._start, self._seen, self._pass_world, self.samples)

    def _epoch_done(self, position: int, world_size: int) -> bool:
        return rank_share(self.samples - position, world_size, self.batch_size, self.drop_last) == 0

    def __len__(self) -> int:
        """Samples this rank yields in the next (or current) pass: the epoch, or what is left of it."""
        start = 0 if self._finished else self._start
        return rank_share(self.samples - start, self.world_size, self.batch_size, self.drop_last)

    @property
    def num_batches(self) -> int:
        """Items this rank yields per pass when the dataset batches (``len(self)`` otherwise)."""
        return math.ceil(len(self) / (self.batch_size or 1))

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch (and so the order) of the next pass.

        Setting the epoch a pass is already in (for example one just loaded by
        :meth:`load_state_dict`) keeps its position, unless that pass has run to its end.
        """
        if epoch < 0:
            raise UsageError(f"epoch must be non-negative, got {epoch}")
        if epoch != self._epoch or self._finished:
            self._epoch, self._start, self._seen, self._finished = epoch, 0, 0, False
        self._publish()

    def _publish(self) -> None:
        self._next_pass[0], self._next_pass[1] = self._epoch, 0 if self._finished else self._start

    def track(self, batches: Iterable[dict]) -> Iterator[dict]:
        """Yield the items of ``batches`` (a DataLoader over this dataset), counting them.

        The count of samples the training loop has received is what :meth:`state_dict` saves;
        it is kept here, in the main process, because DataLoader workers hold only copies.
        """
        loader_batch = getattr(batches, "batch_size", None)
        workers = getattr(batches, "num_workers", 0)
        if self.batch_size is not None and loader_batch is not None:
            raise UsageError("the dataset already batches: use DataLoader(ds, batch_size=None, ...)")
        if self._finished:  # the same epoch again, without set_epoch
            self._start, self._seen, self._finished = 0, 0, False
        else:  # a new pass continues where the last one stopped
            self._start, self._seen = self.position, 0
        self._pass_world = self.world_size
        self._loader_exact = self.batch_size is not None or workers == 0 or loader_batch in (None, 1)
        self._publish()
        for batch in batches:
            keys = batch["__key__"]
            self._seen += 1 if isinstance(keys, str) else len(keys)
            yield batch
        self._finished = True
        self._publish()

    def state_dict(self, samples_seen: int | None = None) -> dict:
        """Where the job stands in its epoch: tiny, JSON-serialisable, the same on every rank.

        ``samples_seen``: samples this rank has received since the current pass started, if the
        loop was not wrapped in :meth:`track`.
        """
        world = self._pass_world if samples_seen is None else self.world_size
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
        epoch = self._epoch
        if (self._finished and samples_seen is None) or self._epoch_done(position, world):
            epoch, position = epoch + 1, 0
        return state_record(self._order_identity(), epoch, int(position), world)

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue where :meth:`state_dict` left off, on this job's world size and batch size."""
        epoch, position = check_state(state, self._order_identity())
        self._epoch, self._start, self._seen, self._finished = epoch, position, 0, False
        self._publish()
        self._pass_world = self.world_size

    def _order_identity(self) -> OrderIdentity:
        return OrderIdentity(self.split, self.samples, self._keys_digest, self.seed, self.shuffle)

"""``StreamingDataLoader``: a ``DataLoader`` that saves and restores where its dataset stands.

Training frameworks resume a loader, not a dataset: Lightning saves a loader's state exactly when
the object ``train_dataloader()`` returns has ``state_dict``/``load_state_dict``, and a plain
``DataLoader`` has neither, so a resumed run replays its epoch. MosaicML's and LitData's loaders
of this name exist for that reason. This one delegates both to the dataset's own protocol (a
global position counted in the main process, :meth:`StreamingDataset.track`), which is exact with
any number of DataLoader workers and loads on another number of ranks.

Epochs: frameworks set the epoch on a loader's sampler (Lightning calls ``set_epoch`` on
``loader.sampler`` at every epoch's start, the resumed one included), and an iterable dataset's
sampler has no such method; this loader's passes it on to the dataset. Where nobody sets it, once a
pass has run to its end the next is of the next epoch.

Lightning pre-fetches a batch ahead only from loaders without a length; this one has a length, so
what its ``training_step`` received is what the state counts.
"""

from __future__ import annotations

import math
from typing import Any, Iterator, Mapping

from torch.utils.data import DataLoader, Sampler

from pipeline.errors import UsageError
from pipeline.read.stream.dataset import StreamingDataset
from pipeline.read.stream.order import rank_share

#: ``batch_size`` not given: None (the items as they are) when the dataset batches, else 1, as for ``DataLoader``.
_DEFAULT = object()


class StreamingDataLoader(DataLoader):
    """A ``DataLoader`` over a :class:`StreamingDataset` with ``state_dict``/``load_state_dict``.

    Use it as a ``DataLoader`` (every option is ``DataLoader``'s); save ``loader.state_dict()`` with
    a checkpoint and ``loader.load_state_dict(...)`` before iterating to continue mid-epoch: on any
    number of workers, and on another number of ranks. Lightning does both by itself. Give the
    dataset ``batch_size=`` (the fast path) and leave the loader's unset; with workers, a loader
    batch of several single samples cannot be resumed exactly and is refused.
    """

    def __init__(self, dataset: StreamingDataset, batch_size: Any = _DEFAULT, **options: Any) -> None:
        if not isinstance(dataset, StreamingDataset):
            raise UsageError(f"StreamingDataLoader reads a pipeline.StreamingDataset, not a {type(dataset).__name__}")
        if batch_size is _DEFAULT:
            batch_size = None if dataset.batch_size is not None else 1
        if dataset.batch_size is not None and batch_size is not None:
            raise UsageError("the dataset already batches: leave the loader's batch_size unset")
        if options.get("num_workers", 0) > 0 and options.get("in_order") is False:
            raise UsageError(
                "in_order=False hands batches over out of order, so no count of them is a position: drop it"
            )
        if options.get("num_workers", 0) > 0 and batch_size not in (None, 1):
            raise UsageError(
                f"DataLoader workers batching {batch_size} single samples each cannot resume exactly: "
                f"give the dataset batch_size={batch_size} instead"
            )
        super().__init__(dataset, batch_size=batch_size, **options)
        self._received_before = 0  # items of the epoch received before a loaded state
        self._pass_length: int | None = None  # of the pass running, counted from its epoch's start
        self._length_told = False  # whether len() answered since the pass was made

    @property
    def sampler(self) -> "EpochSampler":
        """What the DataLoader iterates for an iterable dataset, with a ``set_epoch`` for frameworks."""
        return self._epoch_sampler

    @sampler.setter
    def sampler(self, sampler: Sampler) -> None:  # DataLoader.__init__ sets it, once
        self._epoch_sampler = EpochSampler(sampler, self.dataset)  # type: ignore[arg-type]

    def __iter__(self) -> Iterator[Any]:
        dataset: StreamingDataset = self.dataset  # type: ignore[assignment]
        self._pass_length = self._received_before + self._items(len(dataset))
        self._received_before, self._length_told = 0, False  # the next pass: a whole epoch, unless loaded again
        return self._counted_pass()

    def _counted_pass(self) -> Iterator[Any]:
        try:  # counted from before the workers start: they read the pass's start as it is published
            yield from self.dataset.track(_Pass(self), next_epoch=True)  # type: ignore[attr-defined]
        finally:
            self._pass_length = None

    def __len__(self) -> int:
        """Items of an epoch on this rank, counted from the epoch's start: in a resumed epoch, those
        received before the state was saved (on the ranks of then) and those still to come.

        Lightning asks twice and means two things. Right after it makes a pass, its fetcher asks
        for that pass's length, to know the last batch (where validation runs): the first question
        after :meth:`__iter__` gets exactly that. Then, once, it asks for the most batches any
        epoch may have, and ends every later epoch there: every other question gets at least a
        whole epoch on this world size, so that an epoch resumed on other ranks, which may be
        shorter or longer than a whole one, cuts none short. (``tests/test_lightning_resume.py``
        checks both with a real ``Trainer``, resumed on 2 ranks and on 1.)
        """
        if self._pass_length is not None and not self._length_told:
            self._length_told = True
            return self._pass_length
        dataset: StreamingDataset = self.dataset  # type: ignore[assignment]
        whole = self._items(rank_share(dataset.samples, dataset.world_size, dataset.batch_size, dataset.drop_last))
        current = self._pass_length
        return max(whole, self._received_before + self._items(len(dataset)) if current is None else current)

    def _items(self, samples: int) -> int:
        if self.dataset.batch_size is not None or self.batch_size is None:  # type: ignore[attr-defined]
            return math.ceil(samples / (self.dataset.batch_size or 1))  # type: ignore[attr-defined]
        return samples // self.batch_size if self.drop_last else math.ceil(samples / self.batch_size)

    def state_dict(self) -> dict:
        """The dataset's state: where the job stands (see :meth:`StreamingDataset.state_dict`)."""
        return self.dataset.state_dict()  # type: ignore[attr-defined]

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.dataset.load_state_dict(state)  # type: ignore[attr-defined]
        received = int(state["position"]) // max(1, int(state.get("world_size") or 1))
        self._received_before = self._items(received)


class _Pass:
    """One pass of the loader as ``track`` takes it: its batching, and the plain DataLoader iteration."""

    def __init__(self, loader: StreamingDataLoader) -> None:
        self.loader = loader
        self.batch_size, self.num_workers = loader.batch_size, loader.num_workers

    def __iter__(self) -> Iterator[Any]:
        return DataLoader.__iter__(self.loader)


class EpochSampler(Sampler):
    """The DataLoader's own sampler of an iterable dataset (it yields placeholders), with the
    ``set_epoch`` that frameworks call on samplers, passed on to the dataset."""

    def __init__(self, sampler: Sampler, dataset: StreamingDataset) -> None:
        self.inner, self.dataset = sampler, dataset

    def __iter__(self) -> Iterator[Any]:
        return iter(self.inner)

    def set_epoch(self, epoch: int) -> None:
        self.dataset.set_epoch(epoch)

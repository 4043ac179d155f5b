"""``StreamingDataset``: the tar shards as a shuffled, sharded, resumable ``IterableDataset``.

Why not stock WebDataset plus ``split_by_node`` and a shuffle buffer: a buffer only mixes samples
that sit near each other in the shards (same patient, consecutive shapes), ranks and DataLoader
workers must agree on who reads what without communicating, and a job stopped mid-epoch must be
able to continue, possibly on a different number of ranks, without repeating or skipping samples.
The manifest records the byte range of every field of every sample in its tar, so a sample can be
fetched by ranged reads of only the fields asked for. That makes a true global shuffle cheap.

The dataset only composes the parts of :mod:`pipeline.read.stream` (order, index, fetching,
epochs and resumption, state, world); decoding goes straight from the read buffer into reused
batch memory.

State for resumption is a handful of numbers (:meth:`StreamingDataset.state_dict`, from
:mod:`.epochs`) kept in the main process; workers learn the epoch and start of a pass from a
two-number shared tensor that the main process writes. Shared memory here is anonymous (file
descriptors), so nothing outlives a crash.
"""

from __future__ import annotations

import math
import os
from typing import Any, Iterable, Iterator, Mapping, Sequence

from torch.utils.data import IterableDataset, get_worker_info

from pipeline.errors import UsageError
from pipeline.read.decode_threads import DecodeThreads
from pipeline.read.items import Delivery
from pipeline.read.stream import passes
from pipeline.read.stream.epochs import Resumption
from pipeline.read.stream.fetch import CacheOptions, Pending, SampleReader, read_ahead
from pipeline.read.stream.order import rank_padding, rank_rows, worker_batches
from pipeline.read.stream.sources import Source, open_sources, sources_of
from pipeline.read.stream.world import explicit_world, resolve_world
from pipeline.read.subsets import Predicate
from pipeline.read.transforms import Transform, as_transform
from pipeline.read.worker_exit import exit_with_the_loader


class StreamingDataset(IterableDataset):
    """One split of a converted output, streamed from its tar shards, for (distributed) training.

    ``root`` is the output directory or its URL (``http(s)://...`` or any fsspec URL); ``fields``
    are decoded (``None``: all of them), nothing else is read. ``root`` may instead be a list of
    :class:`pipeline.Source` (outputs' splits or subsets, with weights), mixed into epochs of ``epoch_size``
    samples (default: each sample once); ``patients``, ``keys`` and ``where`` keep part of one split
    (``docs/READERS.md``; :mod:`pipeline.read.stream.mixing`, :mod:`pipeline.read.subsets`). Items are
    ``{"__key__": str, "__pad__": bool, field: Tensor}`` or, with ``batch_size``, batches
    ``{"__key__": [str, ...], "__pad__": BoolTensor(b), field: Tensor(b, ...)}`` assembled before
    they leave the DataLoader worker — use ``DataLoader(ds, batch_size=None, num_workers=W, persistent_workers=True)``
    then. Dataset-level batches are the fast path (one reused memory slot per batch, no copy;
    shared memory with workers) and make a rank's sequence independent of ``num_workers``.
    Persistent workers follow :meth:`set_epoch` and keep their slots warm across epochs. A
    batch stays valid for as long as the receiving process holds any tensor (or view) of it;
    only then is its memory reused — don't pass such tensors on to yet another process.

    ``shuffle=False`` keeps manifest order; ``seed`` and the epoch fix the order otherwise.
    ``drop_last`` drops, rather than pads, the tail that would make ranks unequal.
    ``check_digests`` compares each decoded field with its digest in the manifest (xxh3-128) the
    first time a process decodes it: Blosc frames carry no checksum, so without it a corrupted
    payload may decode to wrong values silently. It costs 10-20 % of the first epoch.
    ``storage_options``: fsspec's options for an output at a URL (credentials, endpoint, ...; by
    default fsspec finds them in the environment and configuration files), as for ``ZarrDataset``.
    ``cache_dir``, ``cache_limit`` (bytes): shards at URLs copied to local disk once, shared by the machine's ranks.
    Every option after ``fields`` is keyword-only, in both readers.
    ``compact``: fields in their stored dtypes (label and masks narrowed, ``docs/FORMAT.md``), not
    widened to the source dtypes (``source_dtypes``): smaller batches, widened on the GPU by
    ``pipeline.to_device(batch, device, ds.source_dtypes)``.
    ``decode_threads``: threads that decode the samples of a batch at once (default: the process's
    cores, divided among local ranks and DataLoader workers; :mod:`pipeline.read.decode_threads`).
    ``transform(sample, rng) -> sample``: augmentation run on each decoded sample where decoding
    runs (decode threads, DataLoader workers), with ``rng`` seeded from ``(seed, epoch, key)`` — the
    same for any number of ranks or workers and after a resume; or ``transform(sample)`` (a MONAI
    ``Compose``, torchvision v2; on tensors, seeded alike). Contract: :mod:`pipeline.read.transforms`.

    Ranks: ``rank``/``world_size`` if given, else ``torch.distributed`` when initialised, else the
    ``RANK``/``WORLD_SIZE`` environment, else one process — always decided in the main process
    and handed to DataLoader workers. Every rank yields ``len(ds)`` samples per epoch; see
    :mod:`pipeline.read.stream.order` for order, partition, padding (default) and ``drop_last``.
    ``__pad__`` is True for the samples that only pad a rank's share (repeats of the epoch's first
    samples): leave them out of an evaluation's sums to count every sample once over all ranks.

    Epochs and resumption (recipes in ``docs/READERS.md``): ``pipeline.StreamingDataLoader`` saves
    and restores its dataset's :meth:`state_dict` (Lightning does that by itself); so does
    ``ds.track(loader)`` around the loop. The state is a few numbers (epoch, global position), the
    same on every rank, loadable on another world size (the rest is re-split); a finished epoch is
    saved as the start of the next. torchdata's ``StatefulDataLoader`` is exact too, on the same
    ranks and ``num_workers`` (:mod:`pipeline.read.stream.passes`). Exact resumption with workers
    that batch single samples themselves needs the dataset's ``batch_size`` (or a batch of one).
    """

    def __init__(
        self,
        root: str | os.PathLike | Source | Sequence[Source],
        split: str | None = None,
        fields: Sequence[str] | None = ("img", "label"),
        *,
        shuffle: bool = True,
        seed: int = 0,
        batch_size: int | None = None,
        drop_last: bool = False,
        check_digests: bool = True,
        rank: int | None = None,
        world_size: int | None = None,
        decode_threads: int | None = None,
        transform: Transform | None = None,
        compact: bool = False,
        storage_options: Mapping[str, Any] | None = None,
        epoch_size: int | None = None,
        patients: int | Iterable[int] | None = None,
        keys: str | Iterable[str] | None = None,
        where: Predicate | None = None,
        cache_dir: str | os.PathLike | None = None,
        cache_limit: int | None = None,
    ) -> None:
        sources = sources_of(root, split, patients, keys, where)
        self.shuffle = shuffle
        self.seed = int(seed)
        self.batch_size = batch_size
        self.drop_last = drop_last
        if batch_size is not None and batch_size < 1:
            raise UsageError(f"batch_size must be at least 1 or None, got {batch_size}")
        if seed < 0:
            raise UsageError(f"seed must be non-negative, got {seed}")
        self._explicit_world = explicit_world(rank, world_size)
        self.storage_options = options = dict(storage_options or {})
        self.compact = compact
        got = open_sources(sources, fields, compact, check_digests, options, epoch_size, self.seed, shuffle)
        self.fields, self._specs, self._torch_dtypes, self.source_dtypes, self._index = got[1:6]
        self._mixture, identity, self.split = got.mixture, got.identity, got.identity.split  # split: "a+b" for sources
        self.root = got.roots[0] if len(sources) == 1 else got.roots
        self._cache = CacheOptions.of(cache_dir, cache_limit, got.roots)  # docs/READERS.md: caching shards at URLs
        self._handed_over: tuple[int, int] | None = None  # the main process's world, set when pickled
        self._resumption = Resumption(identity, batch_size, drop_last, self.world_size)
        self._sample_reader: SampleReader | None = None  # this process's, see _reader
        self._decoder = DecodeThreads(decode_threads)
        self._pass: passes.PassProgress | None = None  # this process's latest pass (a worker's state)
        self._pending_pass: passes.PassProgress | None = None  # a worker's saved pass, continued by its next
        self.transform = as_transform(transform)

    # ----------------------------------------------------------------- ranks and samples

    def _world(self) -> tuple[int, int]:
        return resolve_world(self._explicit_world, self._handed_over, get_worker_info() is not None)

    @property
    def rank(self) -> int:
        return self._world()[0]

    @property
    def world_size(self) -> int:
        return self._world()[1]

    @property
    def keys(self) -> list[str]:
        """Keys of the rows the epoch's order indexes: the split's (or subset's; sources' in turn), in order."""
        return self._index.keys

    @property
    def samples(self) -> int:
        """Samples per epoch (all ranks together, without padding): ``epoch_size``, by default the keys'."""
        return self._mixture.samples

    # ----------------------------------------------------------------- epochs and resumption (see .epochs)

    @property
    def epoch(self) -> int:
        return self._resumption.epoch

    @property
    def position(self) -> int:
        """Positions of this epoch's global order consumed by the whole job so far."""
        return self._resumption.position

    def __len__(self) -> int:
        """Samples this rank yields in the next (or current) pass: the epoch, or what is left of it."""
        return self._resumption.share(self.world_size)

    @property
    def num_batches(self) -> int:
        """Items this rank yields per pass when the dataset batches (``len(self)`` otherwise)."""
        return math.ceil(len(self) / (self.batch_size or 1))

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch (and so the order) of the next pass; the epoch a pass is already in
        (one just loaded by :meth:`load_state_dict`) keeps its position, unless the pass ran to its end."""
        self._resumption.set_epoch(epoch)

    def track(self, batches: Iterable[dict], *, next_epoch: bool = False) -> Iterator[dict]:
        """Yield the items of ``batches`` (a DataLoader over this dataset), counting them.

        The count of samples the training loop has received is what :meth:`state_dict` saves;
        it is kept here, in the main process, because DataLoader workers hold only copies.
        ``next_epoch``: once a pass has run to its end, the next is of the next epoch unless
        :meth:`set_epoch` says otherwise (``StreamingDataLoader``'s way; Lightning sets no epoch).
        """
        return self._resumption.track(batches, self.world_size, next_epoch)

    def state_dict(self, samples_seen: int | None = None) -> dict:
        """Where the job stands in its epoch: tiny, JSON-serialisable, the same on every rank.

        ``samples_seen``: samples this rank has received since the current pass started, if the
        loop was not wrapped in :meth:`track` (nor read in this process, which counts by itself).
        In a DataLoader worker (torchdata's ``StatefulDataLoader`` asks there): that worker's pass,
        see :mod:`pipeline.read.stream.passes`.
        """
        if get_worker_info() is not None:
            return passes.pass_record(self._resumption.identity, self._pass)
        return self._resumption.state_dict(self.world_size, samples_seen)

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue where :meth:`state_dict` left off, on this job's world size and batch size
        (in a DataLoader worker: the state that worker saved, continued by its next pass)."""
        in_worker = get_worker_info() is not None
        if passes.is_pass_record(state) != in_worker:
            raise UsageError(
                "a DataLoader worker's state (saved by StatefulDataLoader) loads only into that worker, "
                "through the same loader's load_state_dict; the dataset's own state loads in the main process"
            )
        if in_worker:
            self._pending_pass = passes.worker_resumes(state, self._resumption.identity, self._world())
        else:
            self._resumption.load_state_dict(state, self.world_size)

    # ----------------------------------------------------------------- iteration

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_sample_reader"] = None
        if get_worker_info() is None:  # pickled for DataLoader workers: the one place a world is recorded
            state["_handed_over"] = self._world()
        return state

    def __iter__(self) -> Iterator[dict]:
        exit_with_the_loader()
        return self._pass_items()

    def _pass_items(self) -> Iterator[dict]:
        """The items of one pass, which is fixed at its first item, not when the iterator is made:
        torchdata makes iterators early (for a state saved before the first batch; in workers as
        they start), before the loop's ``set_epoch``."""
        rank, world = self._world()
        worker = get_worker_info()
        counted_here = worker is None and not self._resumption.tracking
        if counted_here:  # nothing else counts what this process's loop receives
            self._resumption.begin(world, exact=True, tracked=False)
        if worker is None:
            epoch, start = self._resumption.epoch, self._resumption.pass_start
        else:
            epoch, start = self._resumption.next_pass()
        wid, workers = (0, 1) if worker is None else (worker.id, worker.num_workers)
        saved, self._pending_pass = self._pending_pass, None
        epoch, start, skip = passes.continued(saved, passes.PassPlan(epoch, start, rank, world, wid, workers))
        mixture = self._mixture
        order, appearances = (
            mixture.order(self.seed, epoch, self.shuffle),
            mixture.draws(self.seed, epoch, self.shuffle),
        )
        sequence = rank_rows(order, start, rank, world, self.batch_size, self.drop_last)
        seen = rank_rows(appearances, start, rank, world, self.batch_size, self.drop_last)  # for transforms
        padding = rank_padding(self.samples, start, rank, world, self.batch_size, self.drop_last)
        batches = worker_batches(len(sequence), self.batch_size or 1, wid, workers)
        self._pass = passes.PassProgress(passes.PassPlan(epoch, start, rank, world, wid, workers), len(batches), skip)
        delivery = Delivery.of(batched=self.batch_size is not None, in_worker=worker is not None)
        keys = self._index.keys

        def start_batch(rows: range) -> Pending:
            rows_of = slice(rows.start, rows.stop)
            return self._reader().start_batch(sequence[rows_of], padding[rows_of], keys, delivery, epoch, seen[rows_of])

        items = read_ahead(batches[skip:], start_batch, one_at_a_time=worker is not None)
        yield from passes.counted(self._resumption.counted(items) if counted_here else items, self._pass)

    def _reader(self) -> SampleReader:
        """This process's sample reader: a new one after a fork (never share a parent's connection)."""
        if self._sample_reader is None or self._sample_reader.pid != os.getpid():
            self._sample_reader = SampleReader(
                self.root,
                self._index,
                self._specs,
                self._torch_dtypes,
                self.batch_size,
                self._decoder,
                self.transform,
                self.seed,
                self.storage_options,
                self._cache,
            )
        return self._sample_reader

    def __repr__(self) -> str:
        return (
            f"StreamingDataset({self.root!r}, split={self.split!r}, fields={self.fields}, "
            f"samples={self.samples}, batch_size={self.batch_size}, rank={self.rank}/{self.world_size}, "
            f"epoch={self.epoch})"
        )

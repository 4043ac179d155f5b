"""Streaming the tar shards for (distributed) training: :class:`StreamingDataset` and its parts.

Laid out by concern, after MosaicML Streaming: :mod:`.order` (epoch order, partition over ranks
and workers, resumption arithmetic, pure functions), :mod:`.index` (where each sample's fields lie),
:mod:`.fetch` (ranged reads and decoding), :mod:`.epochs` (epochs, passes and resumption, kept in
the main process), :mod:`.state` (the resumption state), :mod:`.passes` (one worker's pass, the state
torchdata's StatefulDataLoader keeps), :mod:`.world` (rank and world size), :mod:`.dataset`,
which only composes them, and :mod:`.loader` (a DataLoader that saves and restores its dataset). What a user needs is
exported here; the order helpers predict what a rank will read without a dataset.
"""

from pipeline.read.stream.dataset import StreamingDataset
from pipeline.read.stream.loader import StreamingDataLoader
from pipeline.read.stream.order import epoch_order, rank_samples, source_neighbour_ratio

__all__ = ["StreamingDataLoader", "StreamingDataset", "epoch_order", "rank_samples", "source_neighbour_ratio"]

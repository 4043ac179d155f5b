"""Streaming the tar shards for (distributed) training: :class:`StreamingDataset` and its parts.

Laid out by concern, after MosaicML Streaming: :mod:`.order` (epoch order, partition over ranks
and workers, resumption arithmetic), :mod:`.storage` (where the bytes come from),
:mod:`pipeline.read.batches` (handing batches from DataLoader workers through shared memory,
shared with ``ZarrDataset``) and :mod:`.dataset`, which only composes them. The pure helpers
are public so that they can be tested, and used to predict what a rank will read, without a
dataset.
"""

from pipeline.read.batches import MAX_SLOTS
from pipeline.read.stream.dataset import STATE_FORMAT, STATE_VERSION, StreamingDataset
from pipeline.read.stream.order import (
    consumed_position,
    epoch_order,
    rank_positions,
    rank_samples,
    rank_share,
    source_neighbour_ratio,
    worker_batches,
)
from pipeline.store.location import LOCAL_COALESCE_GAP, REMOTE_COALESCE_GAP, read_stream_manifest

__all__ = [
    "LOCAL_COALESCE_GAP",
    "MAX_SLOTS",
    "REMOTE_COALESCE_GAP",
    "STATE_FORMAT",
    "STATE_VERSION",
    "StreamingDataset",
    "consumed_position",
    "epoch_order",
    "rank_positions",
    "rank_samples",
    "rank_share",
    "read_stream_manifest",
    "source_neighbour_ratio",
    "worker_batches",
]

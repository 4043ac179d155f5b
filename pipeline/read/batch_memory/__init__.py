"""Batch memory, one room: where a batch lives on its way from a DataLoader worker to the training loop.

Fresh shared memory is expensive: it is never backed by transparent huge pages, so every 4 KiB
page faults on first touch (measured here: ~1.8 ms per MB, more than decoding the data). Each
worker therefore keeps a small pool of shared-memory *slots*, one batch each, and reuses a slot
once the process that received its batch has dropped every tensor of it.

* :mod:`.memory`: a slot's header words, where each field lies in it (:class:`~.memory.BatchLayout`),
  and the object that owns its pages; both sides import it, neither imports the other.
* :mod:`.pool`: the sending side, a worker's pool of slots and the batch it fills
  (:class:`~.pool.SlotPool`, :class:`~.pool.SharedBatch`).
* :mod:`.registry`: the receiving side, slots kept mapped per worker and a batch rebuilt from one.

What a batch holds besides its fields (``__key__``, ``__pad__``) is :mod:`pipeline.read.items`'.
"""

"""Where bytes come from: one room for reading a file or an object by byte ranges.

* :mod:`~pipeline.io.byte_source`: a :class:`~pipeline.io.byte_source.ByteSource` is one local file
  or one object at a URL: its size, a range of it, a range into the caller's buffer, a local file's
  memory map, and a name fit to print (no credentials); :func:`~pipeline.io.byte_source.read_many`
  reads many ranges of many objects of one file system at once.
* :mod:`~pipeline.io.remote_calls`: the one retry-and-error mapping of every remote operation.
  Remote reads are retried as every read over the network is (:mod:`pipeline.retry`), and a lasting
  failure becomes the error type its caller chooses: a source archive's reads raise
  :class:`~pipeline.errors.SourceError`, an output's :class:`~pipeline.errors.OutputError`.
* :mod:`~pipeline.io.filesystems`: the fsspec file system of a URL (``storage_options`` go there).
* :mod:`~pipeline.io.folder`: the objects under one URL (an output's files and shards) on one file system.
"""

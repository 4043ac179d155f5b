"""Where bytes come from: one room for reading a file or an object by byte ranges.

A :class:`~pipeline.io.byte_source.ByteSource` is one local file or one object at a URL: its size,
a range of it, a range into the caller's buffer, several ranges at once, and a name fit to print
(no credentials). Remote reads are retried as every read over the network is
(:mod:`pipeline.retry`), and a lasting failure becomes the error type its caller chooses: a source
archive's reads raise :class:`~pipeline.errors.SourceError`, an output's :class:`~pipeline.errors.OutputError`.
"""

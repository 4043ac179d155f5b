"""The names the reading figures give their readers and field sets: shared by the benchmark that measures them and
the report that reads them back from JSON (which imports nothing heavy)."""

STREAMING = "streaming"
#: ``decode_threads=1``, in process only: what the decode threads add.
SINGLE_THREAD = "streaming, 1 thread"
#: ``compact=True``: label and masks in their stored (narrow) dtypes.
COMPACT = "streaming, compact"
#: The same, from the output converted with ``prefer="speed"`` (LZ4 where it decodes fastest).
SPEED_COMPACT = "streaming, compact, speed codecs"
#: Two sources (the same output twice, weights 1:1, each drawing half of every epoch): what mixing costs.
MIXED = "streaming, mixed"
#: The reference point: each field a plain ``.npy`` file, read with ``np.load`` (no decoding).
UNCOMPRESSED = "npy, uncompressed"
#: The field set of the rows with augmentation: img and label, elastically deformed.
AUGMENTED = "img+label, elastic"

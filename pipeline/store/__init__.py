"""Floor 3, the on-disk formats, each in one module: Blosc codecs, tar shards, the Zarr layout, the
manifest, and where bytes come from (local paths and URLs). Imports only the ground floor."""

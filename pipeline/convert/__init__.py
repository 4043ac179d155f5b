"""Floor 4, the conversion: Dask orchestration of source members into tar and Zarr shards and a manifest.

Imports the source, the store and the ground floor.
"""

from pipeline.convert.run import ConvertOptions, Summary, convert

__all__ = ["ConvertOptions", "Summary", "convert"]

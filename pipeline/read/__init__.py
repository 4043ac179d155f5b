"""Floor 4, the torch readers: the streaming dataset, the Zarr dataset and its fast path, batches in
reused (shared) memory, decode threads. Imports the store and the ground floor."""

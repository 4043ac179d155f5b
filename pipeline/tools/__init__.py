"""Floor 5, tools: ``info``, ``show``, the synthetic archive generator. Imports the readers, the store,
the source and the ground floor."""

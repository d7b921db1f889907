"""Data sets: download/verify, prepare (raw → processed) and loaders, one module per modality."""

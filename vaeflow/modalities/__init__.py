"""One package per modality (image, molecule, timeseries), each registering itself from its ``__init__``.

A package holds ``config.py`` (its typed data / sample / evaluate sections), ``data.py`` (fetch,
prepare, load, collate, model inputs, the serving codec) and ``task.py`` (samples, figures,
metrics); ``data.py`` never imports ``task.py``, and ``metrics.py`` imports nothing from vaeflow.
"""

"""The data a trial trains on: the built-in datasets and their fixed splits
(:mod:`~tuner.data.builtin`), your files read without trusting them
(:mod:`~tuner.data.files`, :mod:`~tuner.data.reading`), and torch Datasets drawn in
the tuner's batch order (:mod:`~tuner.data.datasets`)."""

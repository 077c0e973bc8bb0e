"""A trained model out of the study: exported to a self-contained file
(:mod:`~tuner.export.from_study`, :mod:`~tuner.export.model_file`), used for predictions
(:mod:`~tuner.export.predict`), or retrained from its trial (:mod:`~tuner.export.rerun`)."""

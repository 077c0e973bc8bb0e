"""Training one configuration: the built-in networks (:mod:`~tuner.train.models`), the
regularization catalogue's techniques (:mod:`~tuner.train.dropout`,
:mod:`~tuner.train.regularizers`), optimizers and schedules (:mod:`~tuner.train.optim`),
losses and metrics (:mod:`~tuner.train.metrics`), the loop itself
(:mod:`~tuner.train.loop`), what a trial trains with (:mod:`~tuner.train.config`), and
the device's switches and sizes (:mod:`~tuner.train.device`,
:mod:`~tuner.run.modelsize`)."""

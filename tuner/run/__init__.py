"""Running a study: starting it (:mod:`~tuner.run.start`, the one path of ``tuner start``
and ``tuner.optimize``), the check of its model before it is created
(:mod:`~tuner.run.precheck`, :mod:`~tuner.run.modelsize`), opening or resuming it
(:mod:`~tuner.run.study`), claiming trials within the study-total budget
(:mod:`~tuner.run.claims`), adapting a trial to the training function
(:mod:`~tuner.run.objective`, :mod:`~tuner.run.userloop`), the sequential and
population runners (:mod:`~tuner.run.runner`, :mod:`~tuner.run.population`), worker
processes (:mod:`~tuner.run.pool`, :mod:`~tuner.run.spawn`, :mod:`~tuner.run.placement`),
heartbeats, the garbage collector's pause (:mod:`~tuner.run.heap`) and queued
configurations (:mod:`~tuner.run.enqueue`)."""

"""Running a study: opening or resuming it (:mod:`~tuner.run.study`), claiming trials
within the study-total budget (:mod:`~tuner.run.claims`), adapting a trial to the
training function (:mod:`~tuner.run.objective`, :mod:`~tuner.run.userloop`), the
sequential and population runners (:mod:`~tuner.run.runner`,
:mod:`~tuner.run.population`), worker processes (:mod:`~tuner.run.pool`,
:mod:`~tuner.run.spawn`, :mod:`~tuner.run.placement`), heartbeats, the garbage
collector's pause (:mod:`~tuner.run.heap`) and queued configurations
(:mod:`~tuner.run.enqueue`)."""

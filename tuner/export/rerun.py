"""Replaying a recorded trial: same config, seed, data split and precision, on the CPU,
to check that its validation curve is reproduced exactly (``tuner rerun``). A trial
trained on a GPU, in a fused population or compiled is replayed too, but is not expected
to match bit for bit (:attr:`Replay.caveats` says why).

>>> replay = rerun_trial(storage, "demo", 3)   # doctest: +SKIP
>>> replay.matches                            # doctest: +SKIP
True
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from tuner.data.builtin import load_task_data
from tuner.errors import UsageError
from tuner.run.study import stored_trial
from tuner.storage import TunerStorage
from tuner.storage.optuna_compat import trial_id_of
from tuner.train.device import resolve_device
from tuner.train.loop import build_for, train
from tuner.train.metrics import task_loss, task_metric
from tuner.train.seeding import seed_everything


@dataclass(frozen=True)
class Replay:
    study: str
    number: int
    recorded: list[float | None]  # val_metric per epoch, as stored (None: not finite)
    rerun: list[float]
    device: str  # where the trial originally ran
    engine: str = "sequential"  # how: one at a time, or in a fused population
    precision: str = "fp32"
    compiled: bool = False

    @property
    def caveats(self) -> list[str]:
        """Why this trial's replay may differ from its record (empty: it should not)."""
        out = []
        if not self.device.startswith("cpu"):
            out.append(f"it ran on {self.device}")
        if self.engine == "fused":
            out.append("it trained in a fused population (its batch order and dropout "
                       "masks were the population's)")
        if self.compiled:
            out.append("its model was compiled (torch.compile rounds differently)")
        return out

    @property
    def matches(self) -> bool:
        return len(self.recorded) == len(self.rerun) and all(
            _same(a, b) for a, b in zip(self.recorded, self.rerun, strict=True))

    def rows(self) -> list[tuple[int, float | None, float | None, bool]]:
        """(epoch, recorded, rerun, equal) for every epoch either curve has."""
        n = max(len(self.recorded), len(self.rerun))
        out = []
        for i in range(n):
            a = self.recorded[i] if i < len(self.recorded) else None
            b = self.rerun[i] if i < len(self.rerun) else None
            out.append((i + 1, a, b, i < len(self.recorded) and i < len(self.rerun)
                        and _same(a, b)))
        return out


def rerun_trial(storage: TunerStorage, study: str, number: int) -> Replay:
    """Train trial ``number`` again, without pruning, for the epochs it ran."""
    stored = stored_trial(storage, study, number)
    recorded, device = storage.recorded_curve(trial_id_of(stored.trial))
    if stored.space.task.objective:
        raise UsageError(f"--trial {number}: study {study!r} trained with your own function "
                         f"(objective {stored.space.task.objective}); the tuner cannot replay it")
    if not recorded:
        raise UsageError(f"--trial {number}: study {study!r} recorded no epochs for it "
                         f"(state {stored.trial.state.name.lower()}); nothing to compare")
    # A pruned trial is replayed up to the epoch it was pruned at; early stopping as before.
    config = replace(stored.config, epochs=len(recorded))
    cpu = resolve_device("cpu")  # and the thread count trials on the CPU ran with
    space = stored.space
    data = load_task_data(space.task, space.seed, str(cpu))
    seed_everything(config.seed)
    model = build_for(config, data)
    attrs = stored.trial.user_attrs
    precision = str(attrs.get("precision", "fp32"))
    result = train(model, data, config, metric=task_metric(space.task), report=None,
                   precision=precision, loss=task_loss(space.task))
    return Replay(study, number, recorded, [m.val_metric for m in result.history],
                  device or "unknown", engine=str(attrs.get("engine", "sequential")),
                  precision=precision, compiled=bool(attrs.get("compiled", False)))


def _same(a: float | None, b: float | None) -> bool:
    if a is None or b is None:  # a non-finite value is stored as NULL
        return (a is None or not math.isfinite(a)) and (b is None or not math.isfinite(b))
    return a == b

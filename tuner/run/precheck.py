"""The check before a study is created: can the space's model train at all?

A model of yours is built on the CPU from random draws of the space, as trials would
build it, and run once on real validation examples (:func:`check_output`). A built-in
model is not built: the largest one the space can draw is sized against the devices'
free memory (:func:`tuner.run.modelsize.check_model_size`). Either way a study that
could only fail is refused before it has a name in the database.

>>> from tuner.space import load_space
>>> check_model(load_space("quick"), devices=[torch.device("cpu")])
[]
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import optuna
import torch

from tuner.catalogue import MODELS
from tuner.data.builtin import load_task_data
from tuner.errors import TunerError, UsageError
from tuner.run.modelsize import check_model_size
from tuner.run.objective import Objective
from tuner.space import Space
from tuner.storage import MemoryRecorder
from tuner.train.loop import build_for, check_aux_head


def check_model(space: Space, *, devices: Sequence[torch.device], copies: int = 1,
                draws: int = 5) -> list[str]:
    """Check, before a study is created, that the space's model can train; return
    warnings (one line each) about what may not.

    A model of the user's: build, on the CPU, the model of random draws of the space,
    as trials would, and raise the first draw's error if none builds: a builder that
    always fails, returns no module or lacks a head the space needs is then reported
    before a study is created (not as the first failed trial of a study that would
    keep the name). A builder that fails on some draws only is left to fail those
    trials.

    A built-in model is not built: the size of the largest one the space can draw is
    computed and compared with the free memory of ``devices`` (one entry per worker),
    ``copies`` models at once (the fused engine's population); see
    :func:`tuner.run.modelsize.check_model_size` for what is refused and what is warned.
    A training function of yours (``objective``) is not checked.
    """
    if space.task.objective:
        return []
    # The trials' own adaptation of a draw (with the task's metric and loss resolved).
    objective = Objective(space, MemoryRecorder(), torch.device("cpu"))
    data = load_task_data(space.task, space.seed, "cpu")
    if space.task.model in MODELS:
        return check_model_size(space, data, devices, copies)
    draw = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=space.seed))
    first: tuple[TunerError, dict[str, Any]] | None = None
    for _ in range(draws):
        trial = draw.ask()
        config = objective.config(trial, 0)
        try:
            model = build_for(config, data)
            check_aux_head(model, config, data)
        except TunerError as exc:
            first = first or (exc, trial.params)
            continue
        check_output(model, data, custom_loss=bool(space.task.loss))
        return []
    assert first is not None
    error, params = first
    drawn = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                      for k, v in params.items())
    raise type(error)(f"{error} (no model built for {draws} random draws of the space, "
                      f"checked before creating the study; the first: {drawn})") from None


def check_output(model: torch.nn.Module, data: Any, custom_loss: bool = False,
                 n: int = 2) -> None:
    """Run ``model`` once on ``n`` validation examples of the real data and refuse an
    output the loss cannot take: not a floating tensor, or not ``[N, n_outputs]``
    (``[N]`` or ``[N, 1]`` for regression). With a loss of yours only the batch axis
    is checked (your loss decides what it takes)."""
    from torch.utils.data import default_collate

    if hasattr(data, "x_val"):
        x = data.x_val[:n]
    else:  # Datasets: their first examples, collated as a loader would
        items = [data.val[i] for i in range(min(n, len(data.val)))]
        x = default_collate(items)[0]
    batch = int(x.shape[0])
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            output = model(x)
    except Exception as exc:  # the user's forward: any error is theirs to see
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UsageError(f"your model's forward pass fails on a batch of {batch} validation "
                         f"examples of shape {list(x.shape)}: {first}") from None
    finally:
        model.train(was_training)
    if not isinstance(output, torch.Tensor) or not output.is_floating_point():
        kind = (f"a tensor of {output.dtype}" if isinstance(output, torch.Tensor)
                else type(output).__name__)
        raise UsageError(f"your model must return a floating-point tensor of logits, but "
                         f"returned {kind} (checked before creating the study)")
    shape = list(output.shape)
    if custom_loss:
        ok = bool(shape) and shape[0] == batch
        expected = f"[{batch}, ...] (the batch first)"
    elif data.task == "regression":
        ok = shape in ([batch], [batch, 1])
        expected = f"[{batch}, 1] or [{batch}]"
    else:
        ok = shape == [batch, data.n_outputs]
        expected = f"[{batch}, {data.n_outputs}] (batch, classes)"
    if not ok:
        raise UsageError(f"your model returns outputs of shape {shape} for a batch of {batch}, "
                         f"but the {data.task} loss needs {expected} (checked on the real "
                         "data before creating the study)")

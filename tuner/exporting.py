"""From a study to a model file and back: the payload ``tuner export`` writes and
:func:`load_model` reads.

>>> model = load_model("best.pt")            # doctest: +SKIP
>>> model.predict([[5.1, 3.5, 1.4, 0.2]])    # doctest: +SKIP
[0]

The payload holds the trial's configuration, the network's spec and weights (the
best epoch's, stored when the trial became the study's best), and the training
split's standardization; see :mod:`tuner.export` for the wrapper and the file format.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tuner.data import load_task_data
from tuner.errors import StudyNotFoundError
from tuner.export import ExportedModel, fold_batchnorm, read_payload
from tuner.models import build_model
from tuner.storage import TunerStorage, trial_info
from tuner.study import stored_trial


def build_payload(storage: TunerStorage, study: str, number: int | None = None, *,
                  fold: bool = False) -> dict[str, Any]:
    """Everything :func:`load_model` needs for trial ``number`` (default: the best)."""
    stored = stored_trial(storage, study, number)
    trial, space, config = stored.trial, stored.space, stored.config
    blob = storage.load_model_blob(trial._trial_id)
    if blob is None:
        raise StudyNotFoundError(
            f"trial {trial.number} of study {study!r} has no stored weights: only trials that "
            f"became the study's best have them; retrain it with `tuner rerun --study {study} "
            f"--trial {trial.number}`")
    state = torch.load(io.BytesIO(blob), map_location="cpu", weights_only=True)
    data = load_task_data(space.task, space.seed, "cpu")
    spec = {"model": config.model, "n_features": data.n_features, "n_outputs": data.n_outputs,
            "image_shape": list(data.image_shape) if data.image_shape else None}
    if fold:
        network = build_network(spec, config.to_dict())
        network.load_state_dict(state)
        state = fold_batchnorm(network).state_dict()
    return {
        "config": config.to_dict(),
        "spec": spec,
        "state_dict": state,
        "folded": fold,
        "preprocessing": {
            "task": data.task, "x_mean": data.x_mean.cpu(), "x_std": data.x_std.cpu(),
            "y_mean": data.y_mean, "y_std": data.y_std,
            "classes": list(data.classes) if data.classes is not None else None,
            "features": list(_feature_names(space.task)),
        },
        "info": {"study": study, "trial": trial.number, "value": trial.value,
                 "metric": space.task.metric, "test_metric": _test_metric(storage, trial._trial_id),
                 "dataset": space.task.data or space.task.dataset},
    }


def build_network(spec: dict[str, Any], config: dict[str, Any]) -> nn.Module:
    """The untrained network of a payload, as :func:`tuner.train.build_for` builds it."""
    if spec["model"] not in ("mlp", "cnn"):
        from tuner.usermodel import build_user_model

        return build_user_model(spec["model"], config, (spec["n_features"],), spec["n_outputs"])
    shape = spec["image_shape"]
    return build_model(spec["model"], n_features=spec["n_features"], n_outputs=spec["n_outputs"],
                       image_shape=tuple(shape) if shape else None, hidden=config["hidden"],
                       layers=config["layers"], dropout=config["dropout"],
                       dropout_kind=config["dropout_kind"], batchnorm=config["batchnorm"])


def load_model(path: str | Path) -> ExportedModel:
    """A model file written by ``tuner export``, as a module in eval mode that takes raw
    features (see :class:`~tuner.export.ExportedModel`).

    >>> model = load_model("best.pt")   # doctest: +SKIP
    >>> model.predict(x_raw)            # doctest: +SKIP
    """
    payload = read_payload(path)
    network = build_network(payload["spec"], payload["config"])
    if payload.get("folded"):
        # Folding a fresh network gives the folded layout; the file holds folded weights.
        network = fold_batchnorm(network)
    network.load_state_dict(payload["state_dict"])
    pre = payload["preprocessing"]
    return ExportedModel(network, task=pre["task"], x_mean=pre["x_mean"], x_std=pre["x_std"],
                         y_mean=pre["y_mean"], y_std=pre["y_std"], classes=pre["classes"],
                         config=payload["config"], info=payload["info"]).eval()


def payload_features(payload: dict[str, Any]) -> tuple[list[str], int]:
    """The feature names a model was trained with (empty when unknown), and their number."""
    return list(payload["preprocessing"].get("features") or []), int(payload["spec"]["n_features"])


def _feature_names(task: Any) -> tuple[str, ...]:
    """The columns of a user's table the model reads (none for built-in datasets, NPZ
    files and functions: their features have no names)."""
    if not task.data:
        return ()
    if task.features:
        return tuple(task.features)
    from tuner.errors import DataError
    from tuner.userdata import DataSpec, read_user_data

    try:
        arrays = read_user_data(DataSpec(task.data, task.target, task.kind, None,
                                         task.aux_target))
    except DataError:
        return ()
    return arrays.feature_names


def _test_metric(storage: TunerStorage, trial_id: int) -> float | None:
    with storage.session() as conn:
        return conn.execute(trial_info.select().with_only_columns(trial_info.c.test_metric)
                            .where(trial_info.c.trial_id == trial_id)).scalar()

"""Your own network: a function that builds an ``nn.Module`` from the trial's configuration.

The contract, for ``--model package.module:function`` (or ``path/file.py:function``)::

    def build(config, input_shape: tuple[int, ...], n_outputs: int) -> nn.Module

``config`` is the trial's :class:`~tuner.train.config.Config`: every built-in value, as a key
or an attribute (``config["hidden"]``, ``config.dropout``, ``config.batchnorm``, ...),
and your ``user_params`` as ``config.user["name"]``; ``input_shape`` is the shape of
one example (``(n_features,)`` for arrays, an item's shape for Datasets); ``n_outputs``
is the number of classes, or 1 for regression. The module takes a batch
``[N, *input_shape]`` and returns logits ``[N, n_outputs]``. The tuner applies
everything else around it: the L1/L2 penalties and max-norm (to every parameter with
two or more dimensions), input noise, the optimizer and its schedule, early stopping
and pruning.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from tuner.errors import DataError
from tuner.train.config import Config
from tuner.usercode import import_reference


def build_user_model(reference: str, config: Config, input_shape: tuple[int, ...],
                     n_outputs: int, builder: Callable[..., Any] | None = None) -> nn.Module:
    """Call the user's builder (``builder``, default: ``reference`` imported) and check
    that it returned a module."""
    builder = builder or import_reference(reference, "--model")
    try:
        model = builder(config, input_shape, n_outputs)
    except Exception as exc:  # the user's code: one line, its own words
        raise DataError(f"--model {reference}: the builder raised "
                        f"{type(exc).__name__}: {exc}") from None
    if not isinstance(model, nn.Module):
        raise DataError(f"--model {reference}: the builder must return a torch.nn.Module, but "
                        f"returned {type(model).__name__}")
    return model

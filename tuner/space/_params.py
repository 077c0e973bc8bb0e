"""Frozen parameter specifications and how each one is drawn from an Optuna trial."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import optuna

Scalar = None | bool | int | float | str


@dataclass(frozen=True)
class Fixed:
    """A parameter held at one value; it is not an Optuna parameter."""

    name: str
    value: Any

    def suggest(self, trial: optuna.Trial) -> Any:
        return self.value


@dataclass(frozen=True)
class FloatRange:
    name: str
    low: float
    high: float
    log: bool = False
    step: float | None = None

    def suggest(self, trial: optuna.Trial) -> Any:
        return trial.suggest_float(self.name, self.low, self.high, log=self.log, step=self.step)


@dataclass(frozen=True)
class IntRange:
    name: str
    low: int
    high: int
    log: bool = False
    step: int = 1

    def suggest(self, trial: optuna.Trial) -> Any:
        return trial.suggest_int(self.name, self.low, self.high, log=self.log, step=self.step)


@dataclass(frozen=True)
class Categorical:
    """A choice among values; a choice may bring its own conditional parameters.

    ``branches`` maps a choice to the parameters that exist only when it is drawn,
    e.g. ``momentum`` under ``optimizer == "momentum"``.
    """

    name: str
    choices: tuple[Scalar, ...]
    branches: tuple[tuple[Scalar, tuple[Param, ...]], ...] = ()

    def suggest(self, trial: optuna.Trial) -> Any:
        return trial.suggest_categorical(self.name, self.choices)

    def branch(self, choice: Any) -> tuple[Param, ...]:
        for value, params in self.branches:
            if value == choice:
                return params
        return ()


Param = Fixed | FloatRange | IntRange | Categorical


def sample(params: tuple[Param, ...], trial: optuna.Trial) -> dict[str, Any]:
    """Draw every parameter, descending into the branch of each drawn choice."""
    values: dict[str, Any] = {}
    for param in params:
        value = param.suggest(trial)
        values[param.name] = value
        if isinstance(param, Categorical):
            values.update(sample(param.branch(value), trial))
    return values


def walk(params: tuple[Param, ...]) -> list[Param]:
    """Every parameter, conditionals included, in declaration order."""
    found: list[Param] = []
    for param in params:
        found.append(param)
        if isinstance(param, Categorical):
            for _, sub in param.branches:
                found.extend(walk(sub))
    return found


def grid_values(param: Param) -> list[Any] | None:
    """The finite set of values a grid search visits, or None when there is none."""
    if isinstance(param, Categorical):
        return list(param.choices)
    if isinstance(param, IntRange) and not param.log:
        return list(range(param.low, param.high + 1, param.step))
    if isinstance(param, FloatRange) and param.step is not None and not param.log:
        n = round((param.high - param.low) / param.step)
        return [param.low + i * param.step for i in range(n + 1)]
    return None


def describe(param: Param) -> str:
    """A short human description, e.g. ``float [1e-06, 0.01] log``."""
    if isinstance(param, Fixed):
        return f"= {param.value!r}"
    if isinstance(param, Categorical):
        return "one of " + ", ".join(str(c) for c in param.choices)
    kind = "float" if isinstance(param, FloatRange) else "int"
    text = f"{kind} [{param.low:g}, {param.high:g}]"
    return text + (" log" if param.log else "")

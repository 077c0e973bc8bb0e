"""The fused population engine: many trials of one model shape trained as one batched model.

A small network leaves a GPU (and even a CPU core) mostly idle: a trial's cost is
per-operation overhead, not arithmetic. Stacking K members' weights on a member axis and
running one batched forward/backward for all of them (as HFTA does) pays that overhead
once for K trials. Everything that does not change shapes — learning rate and schedule,
penalties, dropout rate, noise, max-norm, optimizer hyper-parameters — is a per-member
tensor. The engine talks to its caller through :class:`PopulationHooks` and knows nothing
of Optuna or SQL.
"""

from tuner.fused._engine import PopulationHooks, train_population, unsupported_reason
from tuner.fused._group import MemberResult, group_key
from tuner.fused._metrics import evaluate_members, member_loss, member_metric
from tuner.fused._model import FusedMLP, MLPSpec, add_input_noise, onednn_products
from tuner.fused._optim import (
    FAMILIES,
    FusedOptimizer,
    MemberLossScale,
    add_penalty_grad_,
    apply_max_norm_,
    resolve_hyper,
)
from tuner.fused._schedule import KINDS, FusedSchedule

__all__ = [
    "FAMILIES",
    "KINDS",
    "FusedMLP",
    "FusedOptimizer",
    "FusedSchedule",
    "MLPSpec",
    "MemberLossScale",
    "MemberResult",
    "PopulationHooks",
    "add_input_noise",
    "add_penalty_grad_",
    "apply_max_norm_",
    "evaluate_members",
    "group_key",
    "member_loss",
    "member_metric",
    "onednn_products",
    "resolve_hyper",
    "train_population",
    "unsupported_reason",
]

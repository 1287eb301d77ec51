"""NEST's e-prop conventions in eproptax: NEST's optimizers, update rules and models (docs/nest.md)."""

from ._conventions import NestInfo as NestInfo
from ._conventions import cross_entropy as cross_entropy
from ._conventions import firing_rate_reg as firing_rate_reg
from ._conventions import mean_squared_error as mean_squared_error
from ._conventions import value_and_grad as value_and_grad
from ._conventions import window_weights as window_weights
from ._optim import AdamState as AdamState
from ._optim import adam as adam
from ._optim import clip as clip
from ._optim import gradient_descent as gradient_descent

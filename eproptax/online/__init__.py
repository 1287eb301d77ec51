"""Per-time-step forms of the forward-mode rules: ``OnlineRule(init, step, result, reset)``."""

from .._rtrl import online_rtrl as rtrl

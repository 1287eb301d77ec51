"""Per-time-step forms of the online rules: ``OnlineRule(init, step, result, reset, batch_axes, chunk)``."""

from .._deep_eprop import online_deep_eprop as deep_eprop
from .._engine import batch_sharding as batch_sharding
from .._eprop import online_eprop as eprop
from .._eprop_m import online_eprop_m as eprop_m
from .._kf_rtrl import online_kf_rtrl as kf_rtrl
from .._pp_prop import online_pp_prop as pp_prop
from .._rtrl import online_rtrl as rtrl
from .._snap import online_snap as snap
from .._streaming import load_state as load_state
from .._streaming import save_state as save_state
from .._tbptt import online_tbptt as tbptt
from .._uoro import online_uoro as uoro

__all__ = [
    "batch_sharding",
    "deep_eprop",
    "eprop",
    "eprop_m",
    "kf_rtrl",
    "load_state",
    "pp_prop",
    "rtrl",
    "save_state",
    "snap",
    "tbptt",
    "uoro",
]

"""eproptax: recurrent learning rules (BPTT, RTRL, e-prop and its family) as JAX function transforms."""

from . import cells as cells
from . import nest as nest
from . import online as online
from . import tasks as tasks
from ._bptt import bptt as bptt
from ._cell import Cell as Cell
from ._checks import check_finite as check_finite
from ._deep_eprop import deep_eprop as deep_eprop
from ._deep_r import deep_r as deep_r
from ._engine import FiringRateReg as FiringRateReg
from ._engine import OnlineRule as OnlineRule
from ._engine import OnlineState as OnlineState
from ._engine import sequence_loss as sequence_loss
from ._eprop import adapt_feedback as adapt_feedback
from ._eprop import eprop as eprop
from ._eprop import random_feedback as random_feedback
from ._eprop_m import eprop_m as eprop_m
from ._kf_rtrl import kf_rtrl as kf_rtrl
from ._pp_prop import pp_prop as pp_prop
from ._registry import make_rule as make_rule
from ._registry import rules as rules
from ._rtrl import rtrl as rtrl
from ._snap import snap as snap
from ._tbptt import tbptt as tbptt
from ._train import NonFiniteError as NonFiniteError
from ._train import train as train
from ._tricks import DEFAULT_CHUNK as DEFAULT_CHUNK
from ._tricks import DEFAULT_UNROLL as DEFAULT_UNROLL
from ._uoro import uoro as uoro

__version__ = "0.1.0"

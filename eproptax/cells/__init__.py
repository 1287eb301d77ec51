"""Recurrent cells: each a :class:`~eproptax.Cell` of pure functions."""

from .._cell import Cell as Cell
from .._cell import make_cell as make_cell
from .._cell import stack as stack
from .._contract_check import ContractError as ContractError
from .._contract_check import check as check
from .._flax import from_flax as from_flax
from .._flax import from_nnx as from_nnx
from ._classic import GRUState as GRUState
from ._classic import LeakyRNNState as LeakyRNNState
from ._classic import LSTMState as LSTMState
from ._classic import RNNState as RNNState
from ._classic import gru as gru
from ._classic import leaky_rnn as leaky_rnn
from ._classic import lstm as lstm
from ._classic import rnn as rnn
from ._readout import ReadoutState as ReadoutState
from ._readout import leaky_readout as leaky_readout
from ._readout import readout as readout
from ._spiking import ALIFState as ALIFState
from ._spiking import LIFState as LIFState
from ._spiking import alif as alif
from ._spiking import lif as lif
from ._surrogate import SURROGATES as SURROGATES
from ._surrogate import spike_fn as spike_fn

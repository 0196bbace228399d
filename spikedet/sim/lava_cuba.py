"""What the ``lava`` engine adds around Lava's own LIF for the cuba fields Lava's LIF lacks
(docs/semantics.md §4.5; ``.venv-lava`` only, imports lava, never torch):

- ``reset_mode`` "subtract": ``PySubtractResetModel`` is lava-nc 0.10.0's
  ``PyLifResetModelBitAcc`` (``lava/proc/lif/models.py``) with only its ``reset_voltage``
  replaced, v <- v − (vth << 6) where it spiked instead of v <- 0; the current and voltage
  update (``AbstractPyLifModelFixed.subthr_dynamics``), the threshold and the periodic reset
  stay Intel's code. Loihi 2's neuron microcode can express this reset; Lava 0.10 ships none.
- ``u_bias``: ``ConstantCurrent`` sends an integer vector every step, connected straight to a
  LIF's ``a_in`` (no synapse, so no latency), where it is summed with the synapses' outputs (an
  InPort sums its inputs): Lava's u update reads a_t + u_bias, as ``fixed_cuba`` does. Given
  rows (R, X, Y, C) it sends row t at the population's logical step t (t = h − depth in the
  sample's hardware step h) and the last row after; before its logical step 0 anything it sends
  is wiped by the LIF's reset there (§3.8).
"""

from __future__ import annotations

import numpy as np
from lava.magma.core.decorator import implements, requires, tag
from lava.magma.core.model.py.model import PyLoihiProcessModel
from lava.magma.core.model.py.ports import PyOutPort
from lava.magma.core.model.py.type import LavaPyType
from lava.magma.core.process.ports.ports import OutPort
from lava.magma.core.process.process import AbstractProcess
from lava.magma.core.process.variable import Var
from lava.magma.core.resources import CPU
from lava.magma.core.sync.protocols.loihi_protocol import LoihiProtocol
from lava.proc.lif.models import PyLifResetModelBitAcc
from lava.proc.lif.process import LIFReset


@implements(proc=LIFReset, protocol=LoihiProtocol)
@requires(CPU)
@tag("fixed_pt")
class PySubtractResetModel(PyLifResetModelBitAcc):
    """Lava's bit-accurate LIFReset model whose spike lowers v by the threshold (§4.5)."""

    def reset_voltage(self, spike_vector: np.ndarray) -> None:
        self.v[spike_vector] -= self.effective_vth


class ConstantCurrent(AbstractProcess):
    """Sends ``rows`` [min(t, R − 1)] (X, Y, C) at logical step t of a population of ``depth``
    in samples of ``period`` steps: a constant input beside its synapses (module docstring)."""

    def __init__(self, *, rows: np.ndarray, depth: int, period: int, name: str | None = None):
        super().__init__(name=name)
        self.a_out = OutPort(shape=rows.shape[1:])
        self.rows = Var(shape=rows.shape, init=rows)
        self.depth = Var(shape=(1,), init=depth)
        self.period = Var(shape=(1,), init=period)


@implements(proc=ConstantCurrent, protocol=LoihiProtocol)
@requires(CPU)
@tag("fixed_pt")
class PyConstantCurrentModel(PyLoihiProcessModel):
    a_out: PyOutPort = LavaPyType(PyOutPort.VEC_DENSE, np.int32, precision=24)
    rows: np.ndarray = LavaPyType(np.ndarray, np.int32, precision=24)
    depth: int = LavaPyType(int, np.int32)
    period: int = LavaPyType(int, np.int32)

    def run_spk(self) -> None:
        t = (self.time_step - 1) % int(self.period) - int(self.depth)  # Lava counts from 1
        self.a_out.send(self.rows[min(max(t, 0), self.rows.shape[0] - 1)].copy())

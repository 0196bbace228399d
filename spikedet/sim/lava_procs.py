"""Our Lava processes for a QuantGraph, for what Lava has no exact process of its own (docs
§3.8; synapses are Lava's ``Conv`` / ``Dense``, cuba neurons Lava's ``LIFReset``): graded input,
I-LIF / LIF / max-pool / readout populations, delays and synapse fan-out.

Import only inside ``.venv-lava`` (Python 3.10, lava-nc 0.10.0); never imports torch. Each process
declares *what* it holds (ports, Vars; Lava layout (X, Y, C) = (W, H, C)); its ``fixed_pt`` model
*how* one hardware step updates it, bit for bit as docs/semantics.md §3.2-§3.3. Samples run back
to back: hardware step ``g`` (0-based) is sample ``g // period``, in-sample step
``h = g % period``; a population holds zero state and sends zeros outside its window
``depth <= h < depth + T`` (§3.3: idle before its depth), which also clears it between samples.
"""

from __future__ import annotations

import numpy as np
from lava.magma.core.decorator import implements, requires, tag
from lava.magma.core.model.py.model import PyLoihiProcessModel
from lava.magma.core.model.py.ports import PyInPort, PyOutPort
from lava.magma.core.model.py.type import LavaPyType
from lava.magma.core.process.ports.ports import InPort, OutPort
from lava.magma.core.process.process import AbstractProcess
from lava.magma.core.process.variable import Var
from lava.magma.core.resources import CPU
from lava.magma.core.sync.protocols.loihi_protocol import LoihiProtocol

STATE_LIMIT = (1 << 23) - 1  # clip24: membrane / integrator state saturates at ±(2^23 − 1)
DECAY_ONE = 1 << 12  # 12-bit decay: decay(x) = sign(x)·((|x|·(4096 − dv)) >> 12)


def decay12(x: np.ndarray, dv: int) -> np.ndarray:
    """sign(x)·((|x|·(4096 − dv)) >> 12): the 12-bit decay, truncating toward zero."""
    return np.sign(x) * ((np.abs(x) * (DECAY_ONE - dv)) >> 12)


def ilif_update(
    u_prev: np.ndarray,
    s_prev: np.ndarray,
    a_in: np.ndarray,
    bias: np.ndarray,
    theta: int,
    D: int,
    dv: int,
) -> tuple[np.ndarray, np.ndarray]:
    """One I-LIF step (§3.2, int64) -> (u_t, s_t): u_t = clip24(decay(u_{t-1} − θ·s_{t-1}) + a_t
    + b), s_t = clip(⌊(u_t + θ/2 − 1)/θ⌋, 0, D)."""
    decayed = decay12(u_prev - theta * s_prev, dv)
    u_new = np.clip(decayed + a_in + bias, -STATE_LIMIT, STATE_LIMIT)
    s_new = np.clip((u_new + (theta // 2 - 1)) // theta, 0, D)
    return u_new, s_new


def lif_update(
    u_prev: np.ndarray, s_prev: np.ndarray, a_in: np.ndarray, bias: np.ndarray, vth: int, dv: int
) -> tuple[np.ndarray, np.ndarray]:
    """One LIF step (§3.2, int64) -> (u_t, s_t): u_t = clip24(decay(u_{t-1}·(1 − s_{t-1})) + a_t
    + b), s_t = [u_t > vth] (hard reset to 0)."""
    decayed = decay12(np.where(s_prev > 0, 0, u_prev), dv)
    u_new = np.clip(decayed + a_in + bias, -STATE_LIMIT, STATE_LIMIT)
    return u_new, (u_new > vth).astype(np.int64)


def max_pool_xyc(
    s: np.ndarray, kernel: np.ndarray, stride: np.ndarray, padding: np.ndarray
) -> np.ndarray:
    """Integer max-pool of spikes ``s`` (X, Y, C), (X, Y)-order window, zero padding (s >= 0)."""
    (kx, ky), (sx, sy), (px, py) = (tuple(int(v) for v in a) for a in (kernel, stride, padding))
    x, y, _ = s.shape
    ox, oy = (x + 2 * px - kx) // sx + 1, (y + 2 * py - ky) // sy + 1
    padded = np.pad(s, ((px, px), (py, py), (0, 0)))
    out = np.zeros((ox, oy, s.shape[2]), dtype=s.dtype)
    for i in range(kx):
        for j in range(ky):
            window = padded[i : i + sx * (ox - 1) + 1 : sx, j : j + sy * (oy - 1) + 1 : sy]
            np.maximum(out, window, out=out)
    return out


def readout_update(v_prev: np.ndarray, a_in: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """One integrator step (§3.2): v_t = clip24(v_{t-1} + a_t + b)."""
    return np.clip(v_prev + a_in + bias, -STATE_LIMIT, STATE_LIMIT)


def _step_in_period(time_step: int, period: int) -> int:
    """Lava counts time steps from 1; the in-sample hardware step h counts from 0."""
    return (time_step - 1) % period


# ---- processes (what) ------------------------------------------------------------------------
class GradedSource(AbstractProcess):
    """Emits the graded integer input of logical step t at hardware step t, zeros afterwards.
    ``data`` is (B, T_in, X, Y, C) with T_in = 1 (static input, repeated for each of the ``T``
    logical steps) or T_in = T; sample b goes out in hardware steps [b·period, (b+1)·period)."""

    def __init__(self, *, data: np.ndarray, T: int, period: int, name: str | None = None):
        # data travels to the model once, as the Var's initial value (not also in proc_params)
        super().__init__(T=T, period=period, name=name)
        self.s_out = OutPort(shape=data.shape[2:])
        self.data = Var(shape=data.shape, init=data)
        self.T = Var(shape=(1,), init=T)
        self.period = Var(shape=(1,), init=period)


class SpikeDelay(AbstractProcess):
    """Delays a graded stream by ``delay`` >= 0 hardware steps, adding no latency of its own:
    out(h) = in(h − delay), received and sent within one step (like a neuron). With a
    ``window`` (depth, T, period) of its source it forwards only what the source sent inside
    depth <= h < depth + T: a lagged synapse (§4.4) reaches its target inside the target's
    window also from steps where Lava's LIF (not gated, §3.8) runs outside its own."""

    def __init__(self, *, shape: tuple, delay: int, window=(0, 0, 0), name: str | None = None):
        super().__init__(shape=shape, delay=delay, name=name)
        self.s_in = InPort(shape=shape)
        self.s_out = OutPort(shape=shape)
        self.ring = Var(shape=(max(delay, 1), *shape), init=0)
        self.delay = Var(shape=(1,), init=delay)
        self.window = Var(shape=(3,), init=np.asarray(window))


class SynapseFanout(AbstractProcess):
    """The fan-out wiring of a synapse (§3.2): its Conv output (X, Y, c) repeated ``factor`` x
    ``factor`` (nearest upsampling) into channels ``offset .. offset + c - 1`` of a population
    input (factor·X, factor·Y, ``channels``), zeros elsewhere, within the step it arrives (no
    latency of its own). One serves every Conv with the same (population, offset, c, factor):
    its InPort sums them first, which is exact because the wiring is linear."""

    def __init__(
        self,
        *,
        shape: tuple[int, int, int],
        factor: int,
        offset: int,
        channels: int,
        name: str | None = None,
    ):
        super().__init__(shape=shape, factor=factor, offset=offset, channels=channels, name=name)
        x, y, _ = shape
        self.a_in = InPort(shape=shape)
        self.a_out = OutPort(shape=(x * factor, y * factor, channels))
        self.factor = Var(shape=(1,), init=factor)
        self.offset = Var(shape=(1,), init=offset)


class _Population(AbstractProcess):
    """Common ports and Vars of a population of shape (X, Y, C) with per-channel bias (C,)."""

    def __init__(
        self,
        *,
        shape: tuple[int, int, int],
        bias: np.ndarray,
        theta: int,
        depth: int,
        T: int,
        period: int,
        name: str | None = None,
        **extra: int,
    ):
        super().__init__(shape=shape, name=name, **extra)
        self.a_in = InPort(shape=shape)
        self.s_out = OutPort(shape=shape)
        self.bias = Var(shape=(shape[-1],), init=np.asarray(bias, dtype=np.int64))
        self.theta = Var(shape=(1,), init=theta)
        self.depth = Var(shape=(1,), init=depth)
        self.T = Var(shape=(1,), init=T)
        self.period = Var(shape=(1,), init=period)


class ILIFPopulation(_Population):
    """I-LIF neurons (§3.2): state u, graded spike s in 0..D; sends s_t each active step."""

    def __init__(self, *, D: int, dv: int, **kwargs):
        super().__init__(D=D, dv=dv, **kwargs)
        shape = kwargs["shape"]
        self.u = Var(shape=shape, init=0)
        self.s = Var(shape=shape, init=0)
        self.D = Var(shape=(1,), init=D)
        self.dv = Var(shape=(1,), init=dv)


class LIFPopulation(_Population):
    """EMS LIF neurons (§3.2, kind ``lif``): state u, binary spike s = [u > vth], hard reset;
    for the ``lif`` populations Lava's own LIF cannot compute (``lava_lif``, §3.8)."""

    def __init__(self, *, vth: int, dv: int, **kwargs):
        super().__init__(vth=vth, dv=dv, **kwargs)
        shape = kwargs["shape"]
        self.u = Var(shape=shape, init=0)
        self.s = Var(shape=shape, init=0)
        self.vth = Var(shape=(1,), init=vth)
        self.dv = Var(shape=(1,), init=dv)


class MaxPoolPopulation(AbstractProcess):
    """Max-pool of a source population's spikes (§3.2, kind ``maxpool``): no state, no bias.
    It keeps the spikes received at step h and sends their max-pool at step h + 1 (the one step
    of latency of the pooling synapse), during its window depth <= h < depth + T."""

    def __init__(
        self,
        *,
        in_shape: tuple[int, int, int],
        shape: tuple[int, int, int],
        kernel: tuple[int, int],
        stride: tuple[int, int],
        padding: tuple[int, int],
        depth: int,
        T: int,
        period: int,
        name: str | None = None,
    ):
        super().__init__(shape=shape, name=name)
        self.s_in = InPort(shape=in_shape)
        self.s_out = OutPort(shape=shape)
        self.held = Var(shape=in_shape, init=0)
        self.kernel = Var(shape=(2,), init=np.asarray(kernel))
        self.stride = Var(shape=(2,), init=np.asarray(stride))
        self.padding = Var(shape=(2,), init=np.asarray(padding))
        self.depth = Var(shape=(1,), init=depth)
        self.T = Var(shape=(1,), init=T)
        self.period = Var(shape=(1,), init=period)


class ReadoutPopulation(_Population):
    """Non-spiking integrator (§3.2): sends v_t each active step (the host keeps v_{T-1})."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.v = Var(shape=kwargs["shape"], init=0)


# ---- process models (how) --------------------------------------------------------------------
@implements(proc=GradedSource, protocol=LoihiProtocol)
@requires(CPU)
@tag("fixed_pt")
class PyGradedSourceModel(PyLoihiProcessModel):
    s_out: PyOutPort = LavaPyType(PyOutPort.VEC_DENSE, np.int32, precision=24)
    data: np.ndarray = LavaPyType(np.ndarray, np.int32, precision=24)
    T: int = LavaPyType(int, np.int32)
    period: int = LavaPyType(int, np.int32)

    def run_spk(self) -> None:
        sample, h = divmod(self.time_step - 1, int(self.period))
        if h < int(self.T) and sample < self.data.shape[0]:
            frames = self.data[sample]
            self.s_out.send(frames[h if frames.shape[0] > 1 else 0])
        else:
            self.s_out.send(np.zeros(self.s_out.shape, dtype=np.int32))


@implements(proc=SpikeDelay, protocol=LoihiProtocol)
@requires(CPU)
@tag("fixed_pt")
class PySpikeDelayModel(PyLoihiProcessModel):
    s_in: PyInPort = LavaPyType(PyInPort.VEC_DENSE, np.int32, precision=24)
    s_out: PyOutPort = LavaPyType(PyOutPort.VEC_DENSE, np.int32, precision=24)
    ring: np.ndarray = LavaPyType(np.ndarray, np.int32, precision=24)
    delay: int = LavaPyType(int, np.int32)
    window: np.ndarray = LavaPyType(np.ndarray, np.int32, precision=24)

    def run_spk(self) -> None:
        incoming = self.s_in.recv()
        depth, T, period = (int(v) for v in self.window)
        if period and not depth <= _step_in_period(self.time_step, period) < depth + T:
            incoming = np.zeros_like(incoming)
        if not int(self.delay):
            self.s_out.send(incoming)
            return
        # The slot written delay steps ago is read back, then overwritten with this step's input.
        slot = (self.time_step - 1) % self.ring.shape[0]
        self.s_out.send(self.ring[slot].copy())
        self.ring[slot] = incoming


class _PyPopulationModel(PyLoihiProcessModel):
    a_in: PyInPort = LavaPyType(PyInPort.VEC_DENSE, np.int64, precision=64)
    s_out: PyOutPort = LavaPyType(PyOutPort.VEC_DENSE, np.int32, precision=24)
    bias: np.ndarray = LavaPyType(np.ndarray, np.int64, precision=24)
    theta: int = LavaPyType(int, np.int64)
    depth: int = LavaPyType(int, np.int32)
    T: int = LavaPyType(int, np.int32)
    period: int = LavaPyType(int, np.int32)

    def _active(self) -> bool:
        """True in the population's window depth <= h < depth + T (its neuron program runs)."""
        h = _step_in_period(self.time_step, int(self.period))
        return int(self.depth) <= h < int(self.depth) + int(self.T)

    def _starts(self) -> bool:
        return _step_in_period(self.time_step, int(self.period)) == int(self.depth)


@implements(proc=ILIFPopulation, protocol=LoihiProtocol)
@requires(CPU)
@tag("fixed_pt")
class PyILIFPopulationModel(_PyPopulationModel):
    u: np.ndarray = LavaPyType(np.ndarray, np.int64, precision=24)
    s: np.ndarray = LavaPyType(np.ndarray, np.int64, precision=8)
    D: int = LavaPyType(int, np.int32)
    dv: int = LavaPyType(int, np.int32)

    def run_spk(self) -> None:
        a_in = self.a_in.recv()  # sum of every synapse into this population (InPort fan-in)
        if not self._active() or self._starts():  # idle (§3.3, bias not applied) or a fresh start
            self.u[:] = 0
            self.s[:] = 0
        if not self._active():
            self.s_out.send(np.zeros(self.s_out.shape, dtype=np.int32))
            return
        theta, D, dv = int(self.theta), int(self.D), int(self.dv)
        u_new, s_new = ilif_update(self.u, self.s, a_in.astype(np.int64), self.bias, theta, D, dv)
        self.u[:] = u_new
        self.s[:] = s_new
        self.s_out.send(s_new.astype(np.int32))


@implements(proc=ReadoutPopulation, protocol=LoihiProtocol)
@requires(CPU)
@tag("fixed_pt")
class PyReadoutPopulationModel(_PyPopulationModel):
    v: np.ndarray = LavaPyType(np.ndarray, np.int64, precision=24)

    def run_spk(self) -> None:
        a_in = self.a_in.recv()
        if not self._active():
            self.v[:] = 0
            self.s_out.send(np.zeros(self.s_out.shape, dtype=np.int32))
            return
        if self._starts():
            self.v[:] = 0
        self.v[:] = readout_update(self.v, a_in.astype(np.int64), self.bias)
        self.s_out.send(self.v.astype(np.int32))


@implements(proc=LIFPopulation, protocol=LoihiProtocol)
@requires(CPU)
@tag("fixed_pt")
class PyLIFPopulationModel(_PyPopulationModel):
    u: np.ndarray = LavaPyType(np.ndarray, np.int64, precision=24)
    s: np.ndarray = LavaPyType(np.ndarray, np.int64, precision=1)
    vth: int = LavaPyType(int, np.int64)
    dv: int = LavaPyType(int, np.int32)

    def run_spk(self) -> None:
        a_in = self.a_in.recv()
        if not self._active() or self._starts():  # idle, or a fresh start (§3.3)
            self.u[:] = 0
            self.s[:] = 0
        if not self._active():
            self.s_out.send(np.zeros(self.s_out.shape, dtype=np.int32))
            return
        u_new, s_new = lif_update(
            self.u, self.s, a_in.astype(np.int64), self.bias, int(self.vth), int(self.dv)
        )
        self.u[:] = u_new
        self.s[:] = s_new
        self.s_out.send(s_new.astype(np.int32))


@implements(proc=MaxPoolPopulation, protocol=LoihiProtocol)
@requires(CPU)
@tag("fixed_pt")
class PyMaxPoolPopulationModel(PyLoihiProcessModel):
    s_in: PyInPort = LavaPyType(PyInPort.VEC_DENSE, np.int32, precision=24)
    s_out: PyOutPort = LavaPyType(PyOutPort.VEC_DENSE, np.int32, precision=24)
    held: np.ndarray = LavaPyType(np.ndarray, np.int32, precision=8)
    kernel: np.ndarray = LavaPyType(np.ndarray, np.int32, precision=8)
    stride: np.ndarray = LavaPyType(np.ndarray, np.int32, precision=8)
    padding: np.ndarray = LavaPyType(np.ndarray, np.int32, precision=8)
    depth: int = LavaPyType(int, np.int32)
    T: int = LavaPyType(int, np.int32)
    period: int = LavaPyType(int, np.int32)

    def run_spk(self) -> None:
        incoming = self.s_in.recv()
        h = _step_in_period(self.time_step, int(self.period))
        if int(self.depth) <= h < int(self.depth) + int(self.T):
            out = max_pool_xyc(self.held, self.kernel, self.stride, self.padding)
            self.s_out.send(out.astype(np.int32))
        else:
            self.s_out.send(np.zeros(self.s_out.shape, dtype=np.int32))
        self.held[:] = incoming  # sent (pooled) at the next step: the synapse latency


@implements(proc=SynapseFanout, protocol=LoihiProtocol)
@requires(CPU)
@tag("fixed_pt")
class PySynapseFanoutModel(PyLoihiProcessModel):
    # int64 like a population's a_in: the sum of several wrapped 24-bit Conv outputs
    a_in: PyInPort = LavaPyType(PyInPort.VEC_DENSE, np.int64, precision=64)
    a_out: PyOutPort = LavaPyType(PyOutPort.VEC_DENSE, np.int64, precision=64)
    factor: int = LavaPyType(int, np.int32)
    offset: int = LavaPyType(int, np.int32)

    def run_spk(self) -> None:
        f, o = int(self.factor), int(self.offset)
        part = self.a_in.recv()
        out = np.zeros(self.a_out.shape, dtype=np.int64)
        out[:, :, o : o + part.shape[2]] = np.repeat(np.repeat(part, f, axis=0), f, axis=1)
        self.a_out.send(out)

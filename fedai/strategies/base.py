"""The server optimiser every strategy is: how the next global model follows the average.

Every fedai strategy aggregates linearly (the only aggregation homomorphic encryption
allows): clients encode ``n_i * w_i``, the coordinator adds, whoever holds the plaintext
average ``avg = sum / N`` computes the next global model from it. A strategy is a
:class:`ServerOptimizer`: ``step(model, average, state) -> (model', state')``.

* FedAvg (McMahan et al., AISTATS 2017) and FedProx (Li et al., MLSys 2020) take the
  average as the next model and keep no state (:attr:`ServerOptimizer.stateful` False);
  FedProx differs on the clients only (:mod:`fedai.strategies.fedprox`).
* The server optimisers of Reddi et al., "Adaptive Federated Optimization" (ICLR 2021),
  Algorithm 2, treat ``delta = average - model`` as a pseudo-gradient and keep per-parameter
  state (:mod:`fedai.strategies.fedavgm`, :mod:`fedai.strategies.fedopt`).

Where the step runs (:mod:`server.strategy`): in the clear on the coordinator; under HE
on every sampled evaluator, the only parties holding the average. Both run this same
function on the same inputs, so the two runs are equal bit for bit, provided the step is
*deterministic* and its output is *representable exactly* by every scheme: IEEE-754
float64 ``+ - * / sqrt`` are correctly rounded (same result on every machine, numpy's
elementwise ufuncs use them), and :func:`snap` puts the new model and state on the
``10**-round_decimals`` grid, where the codecs' exact decode (see
:func:`fedai.aggregation.exact_average`) reproduces them from any ciphertext.

Adding a linear-aggregation strategy ``foo``: write ``fedai/strategies/foo.py`` with a
:class:`ServerOptimizer` subclass and add one line to
:data:`fedai.strategies.registry.REGISTRY`.
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from fedai.aggregation import quantize
from fedai.errors import ProtocolError

Arrays = list[np.ndarray]


@dataclass(frozen=True, slots=True, kw_only=True)
class ServerHyperparameters:
    """The server optimiser's settings (``[strategy]``); unused ones are ignored."""

    server_lr: float = 1.0
    server_momentum: float = 0.9
    beta1: float = 0.9
    beta2: float = 0.99
    tau: float = 1e-3


class ServerOptimizer(ABC):
    """How the next global model follows the round's average.

    Subclasses set :attr:`name`, :attr:`state_slots` (per-parameter state arrays, e.g. 2 for
    first and second moments) and implement :meth:`update`.
    """

    name: str = ""
    #: Number of model-shaped state arrays per parameter (0: no state).
    state_slots: int = 0
    #: True if clients add FedProx's proximal term (Li et al. 2020).
    proximal: bool = False

    def __init__(self, params: ServerHyperparameters | None = None) -> None:
        self.params = params or ServerHyperparameters()

    @property
    def stateful(self) -> bool:
        """True if the next model is not simply the average (a server optimiser)."""
        return self.state_slots > 0

    def initial_state(self, shapes: Sequence[tuple[int, ...]]) -> Arrays:
        """The state before round 1: zeros, ``state_slots`` arrays per parameter."""
        return [np.zeros(s, dtype=np.float64) for _ in range(self.state_slots) for s in shapes]

    def step(
        self,
        *,
        model: Sequence[np.ndarray],
        average: Sequence[np.ndarray],
        state: Sequence[np.ndarray],
        round_decimals: int | None,
    ) -> tuple[Arrays, Arrays]:
        """Return ``(model', state')``, both snapped to the codec grid; inputs untouched.

        Raises:
            ProtocolError: the model, average and state do not have matching layouts.
        """
        if not self.stateful:
            return [np.asarray(a, dtype=np.float64).copy() for a in average], []
        k = len(model)
        if len(average) != k or len(state) != self.state_slots * k:
            raise ProtocolError(
                f"server step needs {k} average and {self.state_slots * k} state arrays "
                f"for {k} model arrays; got {len(average)} and {len(state)}"
            )
        # Inputs are taken as float32 (what every codec's decode means, whatever dtype it
        # returns) and the math is float64: the same numbers in the clear and under HE.
        x = [_as32(a) for a in model]
        delta = [_as32(a) - b for a, b in zip(average, x, strict=True)]
        slots = [[_as32(s) for s in state[j * k : (j + 1) * k]] for j in range(self.state_slots)]
        new_x, new_slots = self.update(x, delta, slots)
        out_state = [snap(a, round_decimals) for slot in new_slots for a in slot]
        return [snap(a, round_decimals) for a in new_x], out_state

    @abstractmethod
    def update(
        self, model: Arrays, delta: Arrays, slots: list[Arrays]
    ) -> tuple[Arrays, list[Arrays]]:
        """Pure math: return the new model and state slots (float64, unsnapped)."""


def _as32(values: np.ndarray) -> np.ndarray:
    return np.asarray(values, dtype=np.float32).astype(np.float64)


def snap(values: np.ndarray, decimals: int | None) -> np.ndarray:
    """Put ``values`` on the codec grid (float64), as :func:`~fedai.aggregation.quantize`."""
    return quantize(values, decimals)


def fingerprint(model: Sequence[np.ndarray], state: Sequence[np.ndarray] = ()) -> str:
    """SHA-256 over the float64 bytes of ``model`` then ``state`` (hex).

    Evaluators that ran the same server step report the same fingerprint; the coordinator
    accepts a server step only when all of them agree.
    """
    h = hashlib.sha256()
    for a in [*model, *state]:
        arr = np.ascontiguousarray(np.asarray(a, dtype=np.float64))
        h.update(str(arr.shape).encode())
        h.update(arr.tobytes())
    return h.hexdigest()


class FedAvg(ServerOptimizer):
    """FedAvg (McMahan et al., AISTATS 2017): the next model is the weighted average."""

    name = "fedavg"

    def update(
        self, model: Arrays, delta: Arrays, slots: list[Arrays]
    ) -> tuple[Arrays, list[Arrays]]:  # pragma: no cover - stateless: step() returns early
        """Unused: the next model is the average."""
        return [x + d for x, d in zip(model, delta, strict=True)], slots


__all__ = [
    "Arrays",
    "FedAvg",
    "ServerHyperparameters",
    "ServerOptimizer",
    "fingerprint",
    "snap",
]

"""The aggregation seam: what clients encode, what the coordinator sums, what clients decode.

fedai aggregates *weighted contributions*, the same way in every scheme:

1. each sampled client ``i`` trains from the current global model to local weights
   ``w_i`` and encodes ``n_i * w_i`` (``n_i`` its aggregation weight, e.g. example count)
   with :meth:`ClientCodec.encode`;
2. the coordinator only **adds** payloads (:meth:`SecureSum.sum`) and keeps the sum and
   the total weight ``N = sum(n_i)``; it never multiplies or divides;
3. clients receive ``(sum, N)`` and :meth:`ClientCodec.decode` it to ``sum / N``, the
   FedAvg model, checking bounds before they use it.

In the clear (:class:`PlainSum` / :class:`PlainCodec`) this is plain FedAvg. Secure schemes
(CKKS, Paillier, in :mod:`fedai.crypto`) implement the same two protocols on ciphertext
bytes carried as ``uint8`` arrays, so the coordinator holds no plaintext update or model.
The round-1 model is never sent: every party builds it from the experiment seed.

Every party also knows the model's *declared layout* (:func:`layout_of`: each array's
shape and float dtype). Payloads record their own layout, and whoever holds the MAC key can
record any, so the coordinator checks contributions against the declared one (never
against a majority or tie-break among contributions, which a key holder could win) and
clients refuse an aggregate whose dtypes differ from it (a relabelled dtype loses precision).
"""

from __future__ import annotations

import contextlib
import math
from collections import Counter
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol, TypeAlias

import numpy as np

from fedai.errors import (
    ContributionError,
    CorruptPayloadError,
    KeyMismatchError,
    LayoutMismatchError,
)

Payload = list[np.ndarray]

#: Float dtypes a payload may record, by item size in bytes.
FLOAT_DTYPES: dict[int, np.dtype[np.floating]] = {
    2: np.dtype(np.float16),
    4: np.dtype(np.float32),
    8: np.dtype(np.float64),
}

#: Item sizes an aggregate may carry where the caller declares shapes only: fedai's models
#: are float32 and its statistics float64, never float16, so a float16 aggregate was
#: relabelled (its values lost precision). Declare dtypes (:class:`ArraySpec`) to pin them.
UNDECLARED_ITEMSIZES = (4, 8)

#: The dtype plain payloads travel in, whatever the model's: :meth:`PlainCodec.encode`
#: and :meth:`PlainSum.sum` make float64 arrays.
PLAIN_DTYPE = np.dtype(np.float64)


@dataclass(frozen=True, slots=True)
class ArraySpec:
    """Shape and float item size (2, 4 or 8 bytes) of one model array.

    A list of these is a *declared layout* (:func:`layout_of`); passed where
    :data:`Shapes` are expected, it pins every array's dtype as well as its shape.

    Raises:
        ValueError: ``itemsize`` is not 2, 4 or 8.
    """

    shape: tuple[int, ...]
    itemsize: int

    def __post_init__(self) -> None:
        if self.itemsize not in FLOAT_DTYPES:
            raise ValueError(
                f"ArraySpec itemsize must be one of {sorted(FLOAT_DTYPES)}; got {self.itemsize!r}"
            )

    @property
    def size(self) -> int:
        """Number of values in the array."""
        return math.prod(self.shape)

    @property
    def dtype(self) -> np.dtype[np.floating]:
        """The numpy float dtype of the array."""
        return FLOAT_DTYPES[self.itemsize]


#: A layout, array by array: a shape alone (its dtype not declared) or an :class:`ArraySpec`
#: (shape and dtype declared).
Shapes: TypeAlias = Sequence[tuple[int, ...] | ArraySpec]


def layout_of(arrays: Sequence[np.ndarray], *, name: str = "arrays") -> list[ArraySpec]:
    """The declared layout of ``arrays`` (e.g. a model's weights): shapes and dtypes.

    Raises:
        ValueError: An array is not a float16/32/64 array (named ``name[i]``).
    """
    out: list[ArraySpec] = []
    for i, a in enumerate(arrays):
        arr = np.asarray(a)
        if arr.dtype.kind != "f" or arr.dtype.itemsize not in FLOAT_DTYPES:
            raise ValueError(f"{name}[{i}] must be a float16/32/64 array; got {arr.dtype}")
        out.append(ArraySpec(tuple(int(d) for d in arr.shape), arr.dtype.itemsize))
    return out


def _declared(entry: tuple[int, ...] | ArraySpec) -> tuple[tuple[int, ...], int | None]:
    if isinstance(entry, ArraySpec):
        return tuple(int(d) for d in entry.shape), entry.itemsize
    return tuple(int(d) for d in entry), None


def layout_mismatch(
    got: Sequence[ArraySpec],
    expected: Shapes,
    what: str,
    *,
    undeclared: Collection[int] = tuple(FLOAT_DTYPES),
) -> str | None:
    """Why the layout ``got`` is not ``expected`` (shapes, then dtypes), or None if it is.

    Args:
        got: The layout a payload records.
        expected: The declared layout; entries that are bare shapes declare no dtype.
        what: What the payload is, for the message (``"payload"``, ``"aggregate"``).
        undeclared: Item sizes accepted where ``expected`` declares no dtype.

    Returns:
        One message: the shapes (expected and got) if they differ, else the arrays whose
        dtype differs (the first three, each with the expected and the got dtype); or None.
    """
    want = [_declared(e) for e in expected]
    if [g.shape for g in got] != [shape for shape, _ in want]:
        return f"{what} shapes must be {[shape for shape, _ in want]}; got {[g.shape for g in got]}"
    problems: list[str] = []
    for i, (g, (_, itemsize)) in enumerate(zip(got, want, strict=True)):
        if itemsize is not None and g.itemsize != itemsize:
            problems.append(
                f"{what} array {i} dtype must be {FLOAT_DTYPES[itemsize]} (the declared "
                f"layout); got {g.dtype}"
            )
        elif itemsize is None and g.itemsize not in undeclared:
            names = " or ".join(str(FLOAT_DTYPES[k]) for k in sorted(undeclared))
            problems.append(f"{what} array {i} dtype must be {names}; got {g.dtype}")
    if not problems:
        return None
    more = f"; and {len(problems) - 3} more arrays" if len(problems) > 3 else ""
    return "; ".join(problems[:3]) + more


def agreed_layout(
    layouts: Sequence[tuple[ArraySpec, ...]], shapes: Shapes | None, *, noun: str = "layout"
) -> tuple[ArraySpec, ...]:
    """The layout every payload of a sum must carry; blames the first one that does not.

    With a declared layout (``shapes``) that is the reference: a payload that differs is
    blamed wherever it stands, so a key holder cannot get an honest contribution dropped by
    re-tagging its own. Where ``shapes`` (or part of it) declares no dtype, the payloads
    must agree among themselves: a strict majority blames the odd ones out; without one
    the sum cannot tell which to leave out, and blames none.

    Args:
        layouts: Each payload's recorded layout, in order.
        shapes: The declared layout, or None.
        noun: What the layout is called in messages (``"shapes"`` in the clear).

    Returns:
        The agreed layout.

    Raises:
        ContributionError: Payload ``index`` differs from the declared layout or from the
            majority.
        CorruptPayloadError: No layouts, or no declared dtype and no majority.
    """
    if not layouts:
        raise CorruptPayloadError("sum needs at least one payload; got none")
    if shapes is not None:
        for i, specs in enumerate(layouts):
            problem = layout_mismatch(specs, shapes, f"payload {i}", undeclared=FLOAT_DTYPES)
            if problem is not None:
                raise ContributionError(problem, index=i)
        if all(isinstance(e, ArraySpec) for e in shapes):
            return layouts[0]
    counts = Counter(layouts)
    if len(counts) == 1:
        return layouts[0]
    (best, top), (_, second) = counts.most_common(2)
    if top == second:
        raise CorruptPayloadError(
            f"payload {noun} must match in every payload: with no majority, the declared "
            f"shapes must be given (with dtypes, shapes=[ArraySpec, ...]) for the sum to tell "
            f"which to leave out; got {len(counts)} different ones in {len(layouts)} payloads"
        )
    odd = next(i for i, specs in enumerate(layouts) if specs != best)
    raise ContributionError(
        f"payload {odd} {noun} must match the other payloads' (the majority, "
        f"{top} of {len(layouts)}: {_describe(best)}); got {_describe(layouts[odd])}",
        index=odd,
    )


def _describe(specs: Sequence[ArraySpec]) -> str:
    values = sum(s.size for s in specs)
    dtypes = sorted({str(s.dtype) for s in specs})
    return f"{len(specs)} arrays, {values} values, {'/'.join(dtypes)}"


#: What to try when model values pass ``secure_aggregation.update_bound`` (appended to the
#: bounds-check messages; it quotes no value).
BOUND_HINT = (
    "the model diverged or its inputs are unscaled: standardise the features "
    '(data.standardize = "zscore"), lower train.lr, or raise secure_aggregation.update_bound'
)


class SecureSum(Protocol):
    """Coordinator side: validates and adds payloads. Holds no secret key."""

    name: str

    def check(self, payload: Payload, shapes: Shapes | None = None) -> None:
        """Raise a typed error if ``payload`` cannot be summed (wrong key, corrupt, ...).

        ``shapes``, when given, is the model's layout the payload must carry: its shapes,
        and its dtypes where entries are :class:`ArraySpec` (a mismatch raises
        :class:`~fedai.errors.LayoutMismatchError`).
        """

    def sum(self, payloads: Sequence[Payload], *, shapes: Shapes | None = None) -> Payload:
        """Return the homomorphic (or plain) sum of already-checked payloads.

        Raises :class:`~fedai.errors.ContributionError` naming the first payload that
        cannot be added, so that the caller can leave it out and sum the rest. ``shapes``,
        when given, is the declared layout every payload must carry (:func:`agreed_layout`);
        without it a layout disagreement with no majority blames nobody.
        """


class ClientCodec(Protocol):
    """Client side: encodes weighted weights and decodes the aggregate."""

    name: str

    def encode(self, weights: Sequence[np.ndarray], weight: float) -> Payload:
        """Return the payload for ``weight * weights``."""

    def decode(self, payload: Payload, total_weight: float, shapes: Shapes) -> list[np.ndarray]:
        """Return ``payload / total_weight`` as arrays of ``shapes``; bounds-checked.

        An aggregate whose dtypes differ from the declared ones (:class:`ArraySpec`
        entries of ``shapes``; float32 or float64 where only shapes are given) raises
        :class:`~fedai.errors.LayoutMismatchError`.
        """


@contextlib.contextmanager
def blame(index: int, *, also: tuple[type[Exception], ...] = ()) -> Iterator[None]:
    """Turn payload ``index``'s typed failure into :class:`ContributionError` naming it.

    ``also`` adds exception types a scheme's native library raises on bad input (TenSEAL's
    ``ValueError``/``RuntimeError``), so they blame the payload too.
    """
    caught: tuple[type[Exception], ...] = (CorruptPayloadError, KeyMismatchError, *also)
    try:
        yield
    except ContributionError:
        raise
    except caught as err:
        raise ContributionError(f"{type(err).__name__}: {err}", index=index) from err


def quantize(values: np.ndarray, decimals: int | None) -> np.ndarray:
    """Snap ``values`` to the grid ``10**-decimals`` (float64); ``None`` leaves them as is.

    Clients quantize their weights before encoding, so that with integer aggregation
    weights the aggregate ``sum(n_i * w_i)`` lies exactly on the grid.
    """
    v = np.asarray(values, dtype=np.float64)
    if decimals is None:
        return v
    step = 10.0**-decimals
    return np.rint(v / step) * step


def exact_average(total: np.ndarray, total_weight: float, decimals: int | None) -> np.ndarray:
    """Return ``total / total_weight`` after snapping ``total`` back onto the grid.

    The sum of grid values with integer weights is itself a grid value, so rounding the
    (decrypted) sum to the grid removes any decryption error smaller than half a grid step
    *exactly*: a CKKS run then yields bit for bit the model a plaintext run yields, and the
    released value no longer carries the CKKS error that key-recovery attacks on shared
    decryptions exploit (Li & Micciancio, EUROCRYPT 2021). ``None`` skips the snap.
    """
    t = np.asarray(total, dtype=np.float64)
    if decimals is None:
        return t / total_weight
    step = 10.0**-decimals
    return (np.rint(t / step) * step) / total_weight


def _check_arrays(payload: Payload, what: str) -> None:
    if not payload:
        raise CorruptPayloadError(f"{what} must hold at least one array; got none")
    for i, a in enumerate(payload):
        if not isinstance(a, np.ndarray) or a.dtype.kind != "f":
            raise CorruptPayloadError(
                f"{what} array {i} must be a float array; got {getattr(a, 'dtype', type(a))}"
            )
        if a.dtype != PLAIN_DTYPE:  # e.g. a float32 relabel: the lost digits are gone
            raise LayoutMismatchError(
                f"{what} array {i} dtype must be {PLAIN_DTYPE} (plain payloads travel in "
                f"float64); got {a.dtype}"
            )
        if not np.all(np.isfinite(a)):
            raise CorruptPayloadError(f"{what} array {i} must be finite; got NaN or inf")


def _plain_layout(payload: Payload) -> tuple[ArraySpec, ...]:
    """The layout of a plain payload that passed :func:`_check_arrays` (all float64)."""
    return tuple(ArraySpec(tuple(int(d) for d in a.shape), a.dtype.itemsize) for a in payload)


def _shapes_only(shapes: Shapes) -> list[tuple[int, ...]]:
    """The shapes of a declared layout: in the clear every array travels as float64."""
    return [_declared(e)[0] for e in shapes]


def _check_shapes(payload: Payload, shapes: Shapes, what: str) -> None:
    problem = layout_mismatch(_plain_layout(payload), _shapes_only(shapes), what)
    if problem is not None:
        raise LayoutMismatchError(problem)


class PlainSum:
    """Sums float payloads in the clear (float64). The coordinator sees the model."""

    name = "none"

    def __init__(self) -> None:
        self._shapes: list[tuple[int, ...]] | None = None

    def check(self, payload: Payload, shapes: Shapes | None = None) -> None:
        """Raise :class:`CorruptPayloadError` on non-float, non-finite or mismatched arrays.

        Plain payloads are float64 whatever the model's dtype (:data:`PLAIN_DTYPE`), so
        only the shapes of ``shapes`` apply; another dtype raises
        :class:`~fedai.errors.LayoutMismatchError`.
        """
        _check_arrays(payload, "plain payload")
        if shapes is not None:
            _check_shapes(payload, shapes, "plain payload")

    def sum(self, payloads: Sequence[Payload], *, shapes: Shapes | None = None) -> Payload:
        """Return the element-wise float64 sum of float64 payloads of one layout.

        Args:
            payloads: The payloads to add.
            shapes: The declared layout (only its shapes apply in the clear); without it
                the payloads must agree among themselves (:func:`agreed_layout`).

        Raises:
            ContributionError: Payload ``index`` is not float64, or differs from the
                declared shapes (or, with none, from the majority's).
            CorruptPayloadError: No payloads, or no declared shapes and no majority.
        """
        if not payloads:
            raise CorruptPayloadError("sum needs at least one payload; got none")
        for i, p in enumerate(payloads):
            with blame(i):
                _check_arrays(p, f"payload {i}")
        layouts = [_plain_layout(p) for p in payloads]
        declared = None if shapes is None else _shapes_only(shapes)
        first = agreed_layout(layouts, declared, noun="shapes")
        out = [np.zeros(s.shape, dtype=np.float64) for s in first]
        for p in payloads:
            for acc, a in zip(out, p, strict=True):
                acc += a
        return out


class PlainCodec:
    """Client codec for the clear: ``encode = n * w`` (float64), ``decode = sum / N``.

    Decoding applies the same bounds check and rounding step as the secure codecs
    (``round_decimals``), so a plaintext run and an encrypted run of the same config
    follow the same trajectory and can be compared parameter by parameter.
    """

    name = "none"

    def __init__(
        self, *, bound: float = 1e6, round_decimals: int | None = None, float64: bool = False
    ) -> None:
        self.bound = bound
        self.round_decimals = round_decimals
        self.float64 = float64  # decode to float64 (feature statistics), not float32

    def encode(self, weights: Sequence[np.ndarray], weight: float) -> Payload:
        """Return ``weight * quantize(w)`` for each array, in float64."""
        return [quantize(w, self.round_decimals) * float(weight) for w in weights]

    def decode(self, payload: Payload, total_weight: float, shapes: Shapes) -> list[np.ndarray]:
        """Return ``payload / total_weight`` as float32 arrays, checking shapes and bounds.

        Raises:
            LayoutMismatchError: An array is not float64 (what :meth:`encode` sends and
                :meth:`PlainSum.sum` returns: a narrower one was relabelled and lost
                digits) or the shapes are not ``shapes``'.
            CorruptPayloadError: The total weight is not positive, or a value is not
                finite or exceeds the bound.
        """
        if not total_weight > 0:
            raise CorruptPayloadError(f"total weight must be > 0; got {total_weight!r}")
        _check_arrays(payload, "aggregate")
        _check_shapes(payload, shapes, "aggregate")
        avg = [exact_average(a, total_weight, self.round_decimals) for a in payload]
        worst = max(float(np.max(np.abs(a))) if a.size else 0.0 for a in avg)
        if worst > self.bound:
            raise CorruptPayloadError(
                f"secure_aggregation.update_bound: aggregate values must be within "
                f"+-{self.bound:g}; got {worst:g}; {BOUND_HINT}"
            )
        return [a if self.float64 else a.astype(np.float32) for a in avg]


__all__ = [
    "BOUND_HINT",
    "FLOAT_DTYPES",
    "PLAIN_DTYPE",
    "UNDECLARED_ITEMSIZES",
    "ArraySpec",
    "ClientCodec",
    "Payload",
    "PlainCodec",
    "PlainSum",
    "SecureSum",
    "Shapes",
    "agreed_layout",
    "blame",
    "exact_average",
    "layout_mismatch",
    "layout_of",
    "quantize",
]

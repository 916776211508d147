"""Paillier secure sum with BatchCrypt packing: exact integer aggregation.

Implements the :mod:`fedai.aggregation` seam with Paillier (EUROCRYPT 1999) over
quantised, packed integers (BatchCrypt, USENIX ATC 2020; :mod:`fedai.crypto.quantize`):

* :class:`PaillierCodec` (client, holds the private key) quantises every model value to
  ``secure_aggregation.quantization_bits`` bits with stochastic rounding, offsets it to be
  non-negative, multiplies it by the client's integer weight ``n_i``, packs
  ``k = floor((|n| - 1) / (r + h))`` values per plaintext and encrypts the plaintexts
  (:mod:`fedai.crypto.paillier_math`). Decoding decrypts, unpacks, checks every slot sum
  against its bound (a corrupt ciphertext decrypts to a random ``m`` and fails), removes
  the offset and divides by ``N``.
* :class:`PaillierSum` (coordinator, holds the public key only) authenticates each payload
  (:mod:`fedai.crypto.envelope`), validates every ciphertext integer (``0 < c < n^2``,
  ``gcd(c, n) = 1``, exact byte length) and multiplies ciphertexts mod ``n^2`` -- Paillier
  addition. It never decrypts and never multiplies by a plaintext.

**Weights, not deltas.** Clients quantise ``w_i`` (their model), as the seam has them
encode ``n_i w_i`` and decode ``sum / N``. Deltas ``w_i - g`` (``g`` the global model) have
a narrower range, so ``r`` could be a few bits smaller, but adding ``g`` back needs ``g``
at decode time, and the aggregate is then no longer self-contained: the model the
coordinator keeps (encrypted) would be a delta against a model nobody keeps. Clients are
stateless (a ClientApp is rebuilt every round, a sampled client may have missed the
previous rounds, an on-prem agent restarts), the round-1 model is never sent, and the
coordinator cannot add an encrypted ``g`` to an encrypted average (it would have to divide
by ``N``). With weights, every aggregate decodes on its own, checkpoints and rollbacks keep
working unchanged, and the price is measured: ``r + h`` bits per slot instead of
``r' + h``; with the defaults (``r = 32``, ``h = 20``) that is 39 values per 2048-bit
plaintext where 16-bit deltas would give 56 (1.4x the ciphertexts).

Why ``r = 32`` by default: weights span ``[-B, B]`` with ``B = update_bound`` (100 by
default, shared with CKKS), so the step ``B / Q`` (``Q = 2**(r-1) - 1``) is 4.7e-8 at
32 bits, 1.2e-5 at 24 and 3.1e-3 at 16. On the quickstart (20 rounds, 358 test samples,
0.0028 accuracy per sample; quantisation emulated without encryption) 16 bits ended 0
to 3 samples from the plaintext run and 24 bits 0 to 2 (11 rounding seeds each), while 32
bits ended exactly 1 sample away in all 16 runs: below float32's resolution of the
weights the rounding no longer changes the trajectory (the one sample is the plaintext
run's own 1e-6 rounding, ``round_decimals``). ``quantization_bits`` trades this for speed.

Quantisation error: ``B / Q`` per value, unbiased; averaged over clients, and far below
DP-SGD's noise. The decrypted aggregate is *exactly* ``sum_i n_i q_i`` -- no
approximation error, so no CKKS-style key-recovery attack on shared decryptions applies
(Li & Micciancio 2021), and ``flood_sigma`` / ``round_decimals`` are not used.

Headroom: a slot holds ``r + h`` bits with ``h = ceil(log2 W)``,
``W = secure_aggregation.max_total_weight``. A config whose clients could sum past ``W``
is refused before any client trains, naming the setting and the value it needs: when the
config is built if the contributor count alone can exceed ``W`` (:func:`config_problems`),
and before the first round once the clients' example counts are known
(:func:`weight_problems`: from the config in a simulation, where ``fedai simulate``'s
pre-run checks, :mod:`fedai.preflight`, refuse it before anything starts; from discovery
on a real federation, where the coordinator refuses it before round 1). A contribution
with ``n_i > W``, a sum of more than ``W`` contributions, or an aggregate with ``N > W``
are still refused at run time (never a silent carry into the next slot).

Parallelism: encryption needs one random ``n``-th residue per ciphertext, the expensive
part, and it does not depend on the plaintext; decryption is one CRT exponentiation pair
per ciphertext. Both run in a process pool of ``secure_aggregation.workers`` processes
(0 = one per available core) when there are enough ciphertexts; workers hold the private
key and never see a plaintext when encrypting. After decoding an aggregate, the codec
starts drawing the residues its next contribution needs in the pool (off the critical
path: the client trains meanwhile).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import math
import os
import struct
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from multiprocessing import get_context
from typing import TYPE_CHECKING, Any

import numpy as np
from gmpy2 import mpz

from fedai.aggregation import UNDECLARED_ITEMSIZES, blame, layout_mismatch
from fedai.crypto.envelope import (
    MAX_SUMMANDS,
    Envelope,
    PayloadKind,
    Scheme,
    reference_layout,
)
from fedai.crypto.packing import ArraySpec, chunk_bounds, flatten_bounded, unflatten
from fedai.crypto.paillier_keys import (
    PaillierClientBundle,
    PaillierCoordinatorBundle,
    create_paillier_keys,
    describe,
    load_paillier_client_bundle,
    load_paillier_coordinator_bundle,
)
from fedai.crypto.paillier_math import (
    PublicKey,
    SecretKey,
    decrypt_task,
    init_worker,
    obfuscators_task,
    split_evenly,
)
from fedai.crypto.quantize import SlotLayout, pack, quantize_stochastic, to_slots, unpack
from fedai.errors import (
    ConfigError,
    CorruptPayloadError,
    KeyFileError,
    LayoutMismatchError,
)
from fedai.schemes import KeyOption, SchemeSpec

if TYPE_CHECKING:
    from fedai.aggregation import Payload, Shapes
    from fedai.config import ExperimentConfig, SecureAggregationSection

logger = logging.getLogger(__name__)

SCHEME_NAME = "paillier"
#: Ciphertexts per envelope blob (32 KiB at 2048 bits): few arrays per payload, small blobs.
CIPHERTEXTS_PER_BLOB = 64
#: Below this many ciphertexts a job runs in the calling process (pool overhead ~ms).
MIN_PARALLEL = 8
_LAYOUT_DOMAIN = b"fedai/paillier-layout/v1\x00"
_LAYOUT = struct.Struct(">IIIQ")


def layout_for(public: PublicKey, *, value_bits: int, max_total_weight: int) -> SlotLayout:
    """The slot layout under ``public`` for the configured bits and headroom.

    Raises:
        ConfigError: The layout cannot work (names the settings).
    """
    layout = SlotLayout(
        value_bits=value_bits,
        max_total_weight=max_total_weight,
        plaintext_bits=public.plaintext_bits,
    )
    problems = layout.problems()
    if problems:
        raise ConfigError(
            [f"secure_aggregation.quantization_bits / max_total_weight: {p}" for p in problems]
        )
    return layout


def layout_mac_key(mac_key: bytes, layout: SlotLayout, key_bits: int) -> bytes:
    """The payload-authentication key bound to one slot layout.

    Clients and coordinator derive it from the key set's MAC key and the layout
    (``r``, ``h``, ``k``, ``|n|``), so a payload packed with another layout -- a client
    running another ``quantization_bits`` or ``max_total_weight`` -- fails authentication
    instead of decoding to wrong values.
    """
    info = _LAYOUT.pack(layout.value_bits, layout.headroom_bits, layout.slots, key_bits)
    return hmac.new(mac_key, _LAYOUT_DOMAIN + info, hashlib.sha256).digest()


def _blob_counts(n_values: int, layout: SlotLayout) -> list[int]:
    """Ciphertexts in each envelope blob."""
    per_blob = layout.slots * CIPHERTEXTS_PER_BLOB
    return [layout.plaintexts_for(hi - lo) for lo, hi in chunk_bounds(n_values, per_blob)]


def _available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


class _Workers:
    """A lazily started process pool holding the private key (``spawn``: fork-safe)."""

    def __init__(self, secret: SecretKey, workers: int) -> None:
        self._secret = secret
        self.size = _available_cores() if workers == 0 else workers
        self._pool: ProcessPoolExecutor | None = None
        self._lock = threading.Lock()

    def pool(self) -> ProcessPoolExecutor | None:
        if self.size <= 1:
            return None
        with self._lock:
            if self._pool is None:
                self._pool = ProcessPoolExecutor(
                    max_workers=self.size,
                    mp_context=get_context("spawn"),
                    initializer=init_worker,
                    initargs=(int(self._secret.p), int(self._secret.q)),
                )
            return self._pool

    def submit_obfuscators(self, count: int) -> list[tuple[Future[bytes], int]]:
        pool = self.pool() if count >= MIN_PARALLEL else None
        if pool is None:
            return []
        return [(pool.submit(obfuscators_task, c), c) for c in split_evenly(count, 2 * self.size)]

    def decrypt(self, blobs: Sequence[bytes], counts: Sequence[int]) -> list[int]:
        pool = self.pool() if sum(counts) >= MIN_PARALLEL else None
        if pool is None:
            width = self._secret.public.ciphertext_bytes
            return [
                self._secret.decrypt(mpz(int.from_bytes(b[i * width : (i + 1) * width], "big")))
                for b, c in zip(blobs, counts, strict=True)
                for i in range(c)
            ]
        futures = [pool.submit(decrypt_task, b, c) for b, c in zip(blobs, counts, strict=True)]
        return [m for f in futures for m in f.result()]

    def close(self) -> None:
        with self._lock:
            if self._pool is not None:
                self._pool.shutdown(wait=True, cancel_futures=True)
                self._pool = None


class PaillierCodec:
    """Client side of Paillier secure aggregation (holds the private key).

    Args:
        bundle: The client key bundle.
        update_bound: Public bound B on every |model value| (``update_bound``): values
            beyond it are refused, and quantisation spans [-B, B].
        quantization_bits: ``r``, bits per quantised value (``quantization_bits``).
        max_total_weight: ``W``, the largest total weight of an aggregate
            (``max_total_weight``); sets the headroom bits.
        workers: Processes for encryption/decryption; 0 = one per available core, 1 =
            none (all in the calling process).
        rng: Source of the stochastic-rounding coins; default: OS entropy.
        prefetch: After decoding an aggregate, start drawing the next contribution's
            obfuscators in the worker pool (only once this codec has encoded: a codec that
            only decodes, e.g. the operator's, never prefetches).

    Raises:
        ConfigError: A parameter is out of range, or the layout does not fit the key.
    """

    name = SCHEME_NAME

    def __init__(
        self,
        bundle: PaillierClientBundle,
        *,
        update_bound: float = 100.0,
        quantization_bits: int = 32,
        max_total_weight: int = 2**20,
        workers: int = 0,
        rng: np.random.Generator | None = None,
        prefetch: bool = True,
    ) -> None:
        problems: list[str] = []
        given: object = bundle  # untyped callers may pass a coordinator bundle
        if not isinstance(given, PaillierClientBundle):
            problems.append(f"bundle must be a PaillierClientBundle; got {type(bundle).__name__}")
        if not (math.isfinite(update_bound) and update_bound > 0):
            problems.append(f"update_bound must be > 0 and finite; got {update_bound!r}")
        if not 0 <= workers <= 256:
            problems.append(f"workers must be in [0, 256]; got {workers!r}")
        if problems:
            raise ConfigError(problems)
        self._bundle = bundle
        self._secret: SecretKey = bundle._secret
        self._public = self._secret.public
        self.update_bound = float(update_bound)
        self.layout = layout_for(
            self._public, value_bits=quantization_bits, max_total_weight=max_total_weight
        )
        self._mac_key = layout_mac_key(bundle._mac_key, self.layout, self._public.bits)
        self._rng = rng if rng is not None else np.random.default_rng()
        self._workers = _Workers(self._secret, workers)
        self._prefetch = prefetch
        self._stock: list[mpz] = []
        self._pending: list[tuple[Future[bytes], int]] = []
        self._lock = threading.Lock()
        self._encoded = False

    @classmethod
    def from_config(
        cls, section: SecureAggregationSection, *, rng: np.random.Generator | None = None
    ) -> PaillierCodec:
        """Build the codec from ``[secure_aggregation]``, loading ``key_dir``'s client bundle.

        Raises:
            ConfigError: The scheme is not ``paillier``, ``key_dir`` is empty, or the
                layout does not fit the key.
            KeyFileError: The client bundle cannot be loaded.
        """
        _require_scheme(section, "PaillierCodec")
        return cls(
            load_paillier_client_bundle(section.key_dir),
            update_bound=section.update_bound,
            quantization_bits=section.quantization_bits,
            max_total_weight=section.max_total_weight,
            workers=section.workers,
            rng=rng,
        )

    @property
    def fingerprint(self) -> bytes:
        """The key-set fingerprint every payload carries."""
        return self._bundle.fingerprint

    @property
    def max_total_weight(self) -> int:
        """The largest total weight an aggregate may carry (the headroom's bound)."""
        return self.layout.max_total_weight

    @property
    def values_per_blob(self) -> int:
        """Values per envelope blob (the envelope's ``slots`` field)."""
        return self.layout.slots * CIPHERTEXTS_PER_BLOB

    def close(self) -> None:
        """Stop the worker processes (they restart on demand)."""
        with self._lock:
            self._pending.clear()
        self._workers.close()

    # ------------------------------------------------------------------ obfuscators
    def precompute(self, count: int) -> None:
        """Top the stock of obfuscators up to ``count`` in the worker pool (returns at once).

        Each obfuscator is used for exactly one ciphertext by a later :meth:`encode`; the
        stock never exceeds one call's ``count`` (no unbounded work when fewer clients
        encode than decode). Without a pool (``workers = 1``) this does nothing.
        """
        with self._lock:
            have = len(self._stock) + sum(c for _, c in self._pending)
        if count > have:
            futures = self._workers.submit_obfuscators(count - have)
            with self._lock:
                self._pending.extend(futures)

    def _collect(self, futures: Sequence[tuple[Future[bytes], int]]) -> list[mpz]:
        width = self._public.ciphertext_bytes
        out: list[mpz] = []
        for f, _ in futures:
            raw = f.result()
            out += [
                mpz(int.from_bytes(raw[i : i + width], "big")) for i in range(0, len(raw), width)
            ]
        return out

    def _take_obfuscators(self, count: int) -> list[mpz]:
        with self._lock:
            pending, self._pending = self._pending, []
        ready = self._collect(pending)
        with self._lock:
            self._stock += ready
            taken, self._stock = self._stock[:count], self._stock[count:]
        missing = count - len(taken)
        if missing:
            futures = self._workers.submit_obfuscators(missing)
            if futures:
                taken += self._collect(futures)
            else:
                taken += self._secret.obfuscators(missing)
        return taken

    # ------------------------------------------------------------------ encode
    def _check_weight(self, weight: float) -> int:
        w = float(weight)
        if not (math.isfinite(w) and w >= 1 and w == int(w)):
            raise ConfigError(
                f"aggregation weight must be a positive integer for paillier; got {weight!r}"
            )
        if w > self.max_total_weight:
            raise ConfigError(
                f"aggregation weight must be <= secure_aggregation.max_total_weight "
                f"{self.max_total_weight} (the headroom); got {int(w)}"
            )
        return int(w)

    def quantize(self, weights: Sequence[np.ndarray]) -> tuple[np.ndarray, list[ArraySpec]]:
        """Quantise ``weights`` (stochastic rounding) to integers in ``[-Q, Q]``.

        Returns:
            The flat int64 values and the arrays' layout.

        Raises:
            ConfigError: A value is not finite or exceeds ``update_bound``, or there are no
                values.
        """
        flat, specs = flatten_bounded(weights, self.update_bound)
        q = quantize_stochastic(
            flat, bound=self.update_bound, levels=self.layout.levels, rng=self._rng
        )
        return q, specs

    def encode(self, weights: Sequence[np.ndarray], weight: float) -> Payload:
        """Quantise, weight, pack and encrypt ``weights``.

        Args:
            weights: The local model's arrays (float16/32/64). Not modified.
            weight: This client's aggregation weight ``n_i``: a positive integer.

        Returns:
            ``[header, blob_0, ...]`` as uint8 arrays; each blob holds up to
            :data:`CIPHERTEXTS_PER_BLOB` fixed-width ciphertexts.

        Raises:
            ConfigError: ``weight`` is not a positive integer or exceeds
                ``max_total_weight``, or a value is not finite or exceeds
                ``update_bound``.
        """
        n_i = self._check_weight(weight)
        q, specs = self.quantize(weights)
        return self.encode_quantized(q, specs, n_i)

    def encode_quantized(self, q: np.ndarray, specs: Sequence[ArraySpec], weight: int) -> Payload:
        """Encrypt already quantised values ``q`` (in ``[-Q, Q]``) with weight ``weight``.

        Raises:
            ConfigError: ``q`` is out of range or does not match ``specs``, or ``weight``
                is not a positive integer <= ``max_total_weight``.
        """
        n_i = self._check_weight(weight)
        q = np.asarray(q, dtype=np.int64)
        levels = self.layout.levels
        if q.ndim != 1 or q.size != sum(s.size for s in specs) or q.size == 0:
            raise ConfigError(
                f"quantised values must be a flat vector of the specs' size; got {q.shape}"
            )
        if np.any(np.abs(q) > levels):
            raise ConfigError(f"quantised values must be in [-{levels}, {levels}]")
        start = time.perf_counter()
        plaintexts = pack(to_slots(q, weight=n_i, levels=levels), self.layout)
        obfuscators = self._take_obfuscators(len(plaintexts))
        n, n2 = self._public.n, self._public.n2
        cts = [(1 + n * m) * x % n2 for m, x in zip(plaintexts, obfuscators, strict=True)]
        counts = _blob_counts(int(q.size), self.layout)
        blobs, at = [], 0
        for c in counts:
            blobs.append(self._public.serialize(cts[at : at + c]))
            at += c
        env = Envelope(
            scheme=int(Scheme.PAILLIER),
            kind=PayloadKind.CONTRIBUTION,
            fingerprint=self.fingerprint,
            n_values=int(q.size),
            slots=self.values_per_blob,
            n_summands=1,
            specs=tuple(specs),
        )
        payload = env.to_payload(blobs, mac_key=self._mac_key)
        self._encoded = True
        logger.debug(
            "encrypted %d values into %d Paillier ciphertexts (%d bytes) in %.3f s",
            q.size,
            len(cts),
            sum(a.size for a in payload),
            time.perf_counter() - start,
        )
        return payload

    # ------------------------------------------------------------------ decode
    def decode_sum(
        self, payload: Payload, total_weight: float, shapes: Shapes
    ) -> tuple[np.ndarray, tuple[ArraySpec, ...]]:
        """Decrypt an aggregate to the exact integer sum ``sum_i n_i q_i``.

        Args:
            payload: The coordinator's sum (or a single contribution).
            total_weight: ``N``, the sum of the summed contributions' weights.
            shapes: The model's layout, in order: :class:`~fedai.aggregation.ArraySpec`
                entries declare each array's dtype too; bare shapes accept float32 or
                float64 (:data:`~fedai.aggregation.UNDECLARED_ITEMSIZES`).

        Returns:
            The int64 sums, one per model value, and the arrays' layout.

        Raises:
            KeyMismatchError: The payload was made under another key set.
            LayoutMismatchError: The aggregate's shapes or dtypes are not the declared
                ones (a relabelled dtype would cost precision).
            CorruptPayloadError: The payload is malformed or unauthenticated, ``N`` is not
                a positive integer <= ``max_total_weight``, a ciphertext is invalid, or a
                decrypted slot lies outside its bound (a corrupted ciphertext).
        """
        total = float(total_weight)
        if not (math.isfinite(total) and total >= 1 and total == int(total)):
            raise CorruptPayloadError(
                f"total weight must be a positive integer for paillier; got {total_weight!r}"
            )
        big_n = int(total)
        if big_n > self.max_total_weight:
            raise CorruptPayloadError(
                f"total weight must be <= secure_aggregation.max_total_weight "
                f"{self.max_total_weight} so that no slot can carry; got {big_n}"
            )
        env, blobs = Envelope.from_payload(
            payload,
            scheme=int(Scheme.PAILLIER),
            fingerprint=self.fingerprint,
            mac_key=self._mac_key,
            slots=self.values_per_blob,
        )
        if env.n_summands > big_n:
            raise CorruptPayloadError(
                f"aggregate summand count must be <= the total weight {big_n} (every "
                f"weight is >= 1); got {env.n_summands}"
            )
        problem = layout_mismatch(env.specs, shapes, "aggregate", undeclared=UNDECLARED_ITEMSIZES)
        if problem is not None:
            raise LayoutMismatchError(problem)
        counts = _blob_counts(env.n_values, self.layout)
        raw = []
        for j, (blob, c) in enumerate(zip(blobs, counts, strict=True)):
            self._public.parse(blob.tobytes(), c, f"aggregate blob {j}")  # validate
            raw.append(blob.tobytes())
        plaintexts = self._workers.decrypt(raw, counts)
        try:
            slots = unpack(plaintexts, env.n_values, self.layout)
        except ValueError as err:
            raise CorruptPayloadError(
                f"decrypted aggregate must unpack into its slots; {err}: a summed "
                "ciphertext is corrupt"
            ) from err
        levels = self.layout.levels
        top = 2 * levels * big_n
        worst = int(slots.max())
        if worst > top:
            raise CorruptPayloadError(
                f"decrypted slot sums must be <= 2*Q*N = {top} (update_bound "
                f"{self.update_bound:g}); got {worst}: a summed ciphertext is corrupt"
            )
        if self._prefetch and self._encoded:  # a training client: it encodes next
            self.precompute(sum(counts))
        return slots.astype(np.int64) - levels * big_n, env.specs

    def decode(self, payload: Payload, total_weight: float, shapes: Shapes) -> list[np.ndarray]:
        """Decrypt an aggregate, remove the offset, divide by ``N``, bounds-check.

        Returns:
            New arrays of ``shapes`` in the dtypes recorded at encoding; every value lies
            in ``[-update_bound, update_bound]``.

        Raises:
            KeyMismatchError: The payload was made under another key set.
            CorruptPayloadError: See :meth:`decode_sum`.
        """
        sums, specs = self.decode_sum(payload, total_weight, shapes)
        scale = self.update_bound / (self.layout.levels * float(total_weight))
        return unflatten(sums.astype(np.float64) * scale, specs)


class PaillierSum:
    """Coordinator side: authenticates, validates and multiplies ciphertexts mod ``n^2``.

    Args:
        bundle: The coordinator bundle (public key only). A client bundle is refused.
        quantization_bits: ``r`` (``secure_aggregation.quantization_bits``).
        max_total_weight: ``W`` (``secure_aggregation.max_total_weight``).

    Raises:
        KeyFileError: ``bundle`` is not a coordinator bundle.
        ConfigError: The layout does not fit the key.
    """

    name = SCHEME_NAME

    def __init__(
        self,
        bundle: PaillierCoordinatorBundle,
        *,
        quantization_bits: int = 32,
        max_total_weight: int = 2**20,
    ) -> None:
        given: object = bundle
        if not isinstance(given, PaillierCoordinatorBundle):
            raise KeyFileError(
                f"coordinator bundle must be a PaillierCoordinatorBundle (public key only); "
                f"got {type(bundle).__name__}"
            )
        self._bundle = bundle
        self._public = bundle.public_key
        self.layout = layout_for(
            self._public, value_bits=quantization_bits, max_total_weight=max_total_weight
        )
        self._mac_key = layout_mac_key(bundle._mac_key, self.layout, self._public.bits)

    @classmethod
    def from_config(cls, section: SecureAggregationSection) -> PaillierSum:
        """Build the coordinator side from ``[secure_aggregation]`` (loads the public bundle).

        Raises:
            ConfigError: The scheme is not ``paillier`` or ``key_dir`` is empty.
            KeyFileError: The coordinator bundle cannot be loaded.
        """
        _require_scheme(section, "PaillierSum")
        return cls(
            load_paillier_coordinator_bundle(section.key_dir),
            quantization_bits=section.quantization_bits,
            max_total_weight=section.max_total_weight,
        )

    @property
    def fingerprint(self) -> bytes:
        """The key-set fingerprint payloads must carry."""
        return self._bundle.fingerprint

    def is_private(self) -> bool:
        """Return whether this object holds the private key (never)."""
        return self._bundle.is_private()

    def _open_contribution(self, payload: Payload, where: str) -> tuple[Envelope, list[np.ndarray]]:
        env, blobs = Envelope.from_payload(
            payload,
            scheme=int(Scheme.PAILLIER),
            fingerprint=self.fingerprint,
            mac_key=self._mac_key,
            slots=self.layout.slots * CIPHERTEXTS_PER_BLOB,
        )
        if env.kind is not PayloadKind.CONTRIBUTION or env.n_summands != 1:
            raise CorruptPayloadError(
                f"{where} must be one client contribution (kind 1, 1 summand); got kind "
                f"{int(env.kind)} with {env.n_summands} summands"
            )
        return env, blobs

    def _ciphertexts(self, env: Envelope, blobs: Sequence[np.ndarray], where: str) -> list[mpz]:
        counts = _blob_counts(env.n_values, self.layout)
        out: list[mpz] = []
        for j, (blob, c) in enumerate(zip(blobs, counts, strict=True)):
            out += self._public.parse(blob.tobytes(), c, f"{where} blob {j}")
        return out

    def check(self, payload: Payload, shapes: Shapes | None = None) -> None:
        """Validate one client contribution before it is summed.

        Checks structure, key fingerprint, counts, the tag over every byte, the layout
        against ``shapes`` (shapes, and dtypes where declared), and every ciphertext
        integer (length, range, unit mod n^2).

        Raises:
            KeyMismatchError: The payload was made under another key set.
            LayoutMismatchError: Its shapes or dtypes are not ``shapes``'.
            CorruptPayloadError: Anything else is wrong.
        """
        env, blobs = self._open_contribution(payload, "payload")
        if shapes is not None:
            problem = layout_mismatch(env.specs, shapes, "payload")
            if problem is not None:
                raise LayoutMismatchError(problem)
        self._ciphertexts(env, blobs, "payload")

    def sum(self, payloads: Sequence[Payload], *, shapes: Shapes | None = None) -> Payload:
        """Multiply checked contributions ciphertext by ciphertext (Paillier addition).

        Args:
            payloads: Contributions that passed :meth:`check`.
            shapes: The model's declared layout (shapes and, as
                :class:`~fedai.aggregation.ArraySpec`, dtypes): every contribution must
                carry it. Without it the contributions must agree among themselves
                (:func:`~fedai.crypto.envelope.reference_layout`).

        Raises:
            ContributionError: Payload ``index`` is foreign, corrupt, not a single
                contribution, differs from the declared layout (or, with none declared,
                from the majority's), or holds an invalid ciphertext; nothing was summed.
            CorruptPayloadError: No payloads, more contributions than
                ``max_total_weight`` (their total weight could carry between slots), or no
                declared dtypes and no majority layout.
        """
        if not payloads:
            raise CorruptPayloadError("sum needs at least one payload; got none")
        if len(payloads) > min(self.layout.max_total_weight, MAX_SUMMANDS):
            raise CorruptPayloadError(
                f"sum must have <= secure_aggregation.max_total_weight "
                f"{self.layout.max_total_weight} contributions (each weighs >= 1); got "
                f"{len(payloads)}"
            )
        start = time.perf_counter()
        envelopes: list[tuple[Envelope, list[np.ndarray]]] = []
        for i, p in enumerate(payloads):
            with blame(i):
                envelopes.append(self._open_contribution(p, f"payload {i}"))
        first = reference_layout([env for env, _ in envelopes], shapes)
        opened: list[list[mpz]] = []
        for i, (env, blobs) in enumerate(envelopes):
            with blame(i):
                opened.append(self._ciphertexts(env, blobs, f"payload {i}"))
        acc = list(opened[0])
        n2 = self._public.n2
        for cts in opened[1:]:
            acc = [a * c % n2 for a, c in zip(acc, cts, strict=True)]
        counts = _blob_counts(first.n_values, self.layout)
        blobs_out, at = [], 0
        for c in counts:
            blobs_out.append(self._public.serialize(acc[at : at + c]))
            at += c
        agg = Envelope(
            scheme=int(Scheme.PAILLIER),
            kind=PayloadKind.AGGREGATE,
            fingerprint=self.fingerprint,
            n_values=first.n_values,
            slots=first.slots,
            n_summands=len(opened),
            specs=first.specs,
        )
        logger.debug(
            "summed %d Paillier contributions of %d values in %.3f s",
            len(payloads),
            first.n_values,
            time.perf_counter() - start,
        )
        return agg.to_payload(blobs_out, mac_key=self._mac_key)


def _require_scheme(section: SecureAggregationSection, what: str) -> None:
    if section.scheme != SCHEME_NAME:
        raise ConfigError(
            f"secure_aggregation.scheme must be 'paillier' for {what}; got {section.scheme!r}"
        )
    if not section.key_dir:
        raise ConfigError(
            "secure_aggregation.key_dir must name a key directory (fedai keys create "
            "--scheme paillier); got ''"
        )


def config_problems(cfg: ExperimentConfig) -> list[str]:
    """Problems of an experiment under Paillier: the headroom must cover every round.

    Every contribution weighs >= 1 (an integer example count, or 1 under user-level DP),
    so a round's total weight is at least its number of contributors: up to
    ``clients_per_round`` (``num_clients`` under ``local+user``, whose Poisson sampling can
    draw everyone). The layout's bits are checked too (any key has >= 1023 plaintext bits).
    """
    sa = cfg.secure_aggregation
    out: list[str] = []
    layout = SlotLayout(
        value_bits=sa.quantization_bits,
        max_total_weight=sa.max_total_weight,
        plaintext_bits=1023,
    )
    out += [
        f"secure_aggregation.quantization_bits / max_total_weight: {p}" for p in layout.problems()
    ]
    e = cfg.experiment
    if cfg.privacy.mode == "local+user":
        most, setting = e.num_clients, "experiment.num_clients (Poisson sampling can draw all)"
    else:
        most, setting = e.clients_per_round, "experiment.clients_per_round"
    if sa.max_total_weight < most:
        out.append(
            f"secure_aggregation.max_total_weight must be >= {most} ({setting}: every "
            f"contribution weighs >= 1, so a round's total weight can reach {most} and "
            f"would carry past the {layout.headroom_bits}-bit headroom); got "
            f"{sa.max_total_weight}"
        )
    return out


def weight_problems(cfg: ExperimentConfig, train_sizes: Sequence[int]) -> list[str]:
    """Problems of the headroom for clients holding ``train_sizes`` training examples.

    A client's aggregation weight is its number of training examples (1 under
    ``local+user``, which :func:`config_problems` covers), so the largest total weight a
    round can carry is the sum of the ``clients_per_round`` largest sizes. The sizes are
    known before the first round: from the config in a simulation (the partition is a
    function of it), from discovery on a real federation (each node announces its size,
    and the coordinator refuses a contribution that claims more).

    Args:
        cfg: The experiment.
        train_sizes: Every client's number of training examples.

    Returns:
        One problem naming ``secure_aggregation.max_total_weight`` with the value needed,
        or nothing.
    """
    if cfg.privacy.mode == "local+user" or not train_sizes:
        return []
    sa = cfg.secure_aggregation
    k = min(cfg.experiment.clients_per_round, len(train_sizes))
    need = sum(sorted((int(n) for n in train_sizes), reverse=True)[:k])
    if need <= sa.max_total_weight:
        return []
    have_bits = SlotLayout(
        value_bits=sa.quantization_bits, max_total_weight=sa.max_total_weight, plaintext_bits=1
    ).headroom_bits
    need_bits = math.ceil(math.log2(need))
    return [
        f"secure_aggregation.max_total_weight must be >= {need}, the largest total weight "
        f"a round can carry (a client weighs its training examples; the {k} largest "
        f"clients, experiment.clients_per_round = {k}, hold {need}), or a slot sum could "
        f"carry past the {have_bits}-bit headroom into its neighbour; got "
        f"{sa.max_total_weight} (>= {need} costs {need_bits - have_bits} more bit(s) per slot)"
    ]


def _create_keys(
    out_dir: str | os.PathLike[str], *, force: bool = False, overwrite: bool = False, **params: Any
) -> PaillierClientBundle:
    return create_paillier_keys(out_dir, force=force, overwrite=overwrite, **params)


SCHEME = SchemeSpec(
    name=SCHEME_NAME,
    summary="Paillier (phe) with BatchCrypt packing: exact integer sums, the coordinator "
    "holds the public key only",
    wire_code=int(Scheme.PAILLIER),
    coordinator_sum=PaillierSum.from_config,
    client_codec=PaillierCodec.from_config,
    create_keys=_create_keys,
    describe_keys=describe,
    key_options=(
        KeyOption(
            flag="--key-bits",
            kwarg="key_bits",
            type=int,
            metavar="BITS",
            help="Paillier: bit length of n (default: 3072, 128-bit security; >= 2048 "
            "unless --force, never < 1024)",
        ),
    ),
    config_problems=config_problems,
    weight_problems=weight_problems,
)

__all__ = [
    "CIPHERTEXTS_PER_BLOB",
    "SCHEME",
    "PaillierCodec",
    "PaillierSum",
    "config_problems",
    "layout_for",
    "layout_mac_key",
    "weight_problems",
]

"""CKKS secure sum (TenSEAL): clients encrypt weighted weights, the coordinator only adds.

Implements the :mod:`fedai.aggregation` seam with CKKS (Cheon, Kim, Kim & Song,
ASIACRYPT 2017) through TenSEAL (Benaissa et al., 2021):

* :class:`CkksCodec` (client, holds the secret key) encodes ``n_i * w_i`` -- all model
  values flattened and packed into ``N/2 = 4096``-slot ciphertexts -- and decodes the
  aggregate: decrypt, divide by the total weight, bounds-check, optionally flood with
  noise, round.
* :class:`CkksSum` (coordinator, holds **no key**) authenticates each payload
  (:mod:`fedai.crypto.envelope`) and adds ciphertexts slot-wise; no multiplication, no
  rescaling, so no relinearisation key and no level is used.

Scaling choice (headroom vs precision). CKKS decryption error is *additive*, about 1e-8
in value units whatever the magnitude (measured: 7e-9 for |x| from 1e-2 to 1e6 at scale
2^40), while the magnitude is capped at ``2**magnitude_bits`` by the data modulus (2^68
for the default [60,50,60] at 2^40; 2^98 for [60,40,40,60]). Dividing ``n_i * w_i`` by
the public bound B before encoding is exactly the same as encoding with scale
``Delta / B``: it buys log2(B) bits of headroom and costs the same bits of precision.
fedai therefore encrypts ``n_i * w_i`` in natural units, keeps the key's scale as the one
knob, and uses B (``update_bound``) to *check* headroom: a client refuses to encode unless
every ``|w| <= B`` and ``n_i * B`` fits, and refuses to decode an aggregate whose worst
case ``N * B`` could have wrapped around the modulus. :attr:`CkksCodec.max_total_weight`
reports the limit: 3.0e18 for the default profile ([60,50,60]: aggregation never
multiplies, so no level beyond the data primes is needed; 61 B/slot on the wire instead
of 81 for [60,40,40,60], and ~30% faster); for the compact chain [60, 40] it is 2621 at
scale 2^40 (too tight) and 41943 at scale 2^36, the recommended way to run that profile
(``fedai keys create --coeff-mod-bit-sizes 60,40 --scale-bits 36``: 33-35 B/param). At
2^30 the limit would be 2.7e6, but the larger decryption error then moves decoded sums
off the rounding grid, so they no longer match a plaintext run bit for bit.

Shared decryptions. Every client sees the decrypted aggregate, and revealing CKKS
decryptions can leak the secret key (Li & Micciancio, "On the Security of Homomorphic
Encryption on Approximate Numbers", EUROCRYPT 2021). :meth:`CkksCodec.decode` therefore
never returns raw decryptions: it rounds to ``round_decimals`` (default 6, erasing the
~1e-8 error in all but boundary cases) and can first add Gaussian noise of standard
deviation ``flood_sigma`` (noise flooding, Li, Micciancio, Schultz & Sorrell, CRYPTO 2022).
Rounding alone is a mitigation, not an IND-CPA^D proof; flooding with a sigma far above
the decryption error is the provable countermeasure, at an accuracy cost.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from fedai.aggregation import (
    UNDECLARED_ITEMSIZES,
    blame,
    exact_average,
    layout_mismatch,
    quantize,
)
from fedai.crypto.ckks_keys import (
    ClientBundle,
    CoordinatorBundle,
    create_ckks_keys,
    describe,
    load_client_bundle,
    load_coordinator_bundle,
)
from fedai.crypto.ckks_wire import load_ckks_vector
from fedai.crypto.envelope import (
    MAX_SUMMANDS,
    Envelope,
    PayloadKind,
    Scheme,
    reference_layout,
)
from fedai.crypto.packing import chunk_bounds, flatten_bounded, unflatten
from fedai.errors import (
    ConfigError,
    CorruptPayloadError,
    KeyFileError,
    LayoutMismatchError,
)
from fedai.schemes import KeyOption, SchemeSpec

if TYPE_CHECKING:
    import os

    import tenseal as ts

    from fedai.aggregation import Payload, Shapes
    from fedai.config import SecureAggregationSection

logger = logging.getLogger(__name__)

#: What TenSEAL raises on a ciphertext it cannot use; it blames the payload, too.
_NATIVE_ERRORS = (ValueError, RuntimeError)


def _deserialize(
    context: ts.Context, blob: np.ndarray, expected_size: int, where: str
) -> ts.CKKSVector:
    """Load one untrusted ciphertext, checked before any native arithmetic touches it."""
    return load_ckks_vector(context, blob.tobytes(), size=expected_size, where=where)


class CkksCodec:
    """Client side of CKKS secure aggregation (holds the secret key).

    Args:
        bundle: The client key bundle.
        update_bound: Public bound B on every |model value| (``secure_aggregation.
            update_bound``). Inputs beyond it are refused; aggregates beyond it are
            treated as corrupt.
        round_decimals: Decimals kept after decryption (``secure_aggregation.
            round_decimals``); None disables rounding (tests and benchmarks only).
        flood_sigma: Standard deviation of Gaussian noise added to decrypted averages
            before rounding (0 disables flooding).
        rng: Randomness for flooding; required when ``flood_sigma > 0``.

    Raises:
        ConfigError: A parameter is out of range.
    """

    name = "ckks"

    def __init__(
        self,
        bundle: ClientBundle,
        *,
        update_bound: float = 100.0,
        round_decimals: int | None = 6,
        flood_sigma: float = 0.0,
        rng: np.random.Generator | None = None,
    ) -> None:
        problems: list[str] = []
        given: object = bundle  # untyped callers may pass a coordinator bundle
        if not isinstance(given, ClientBundle):
            problems.append(f"bundle must be a ClientBundle; got {type(bundle).__name__}")
        if not (math.isfinite(update_bound) and update_bound > 0):
            problems.append(f"update_bound must be > 0 and finite; got {update_bound!r}")
        if round_decimals is not None and not 1 <= round_decimals <= 12:
            problems.append(f"round_decimals must be in [1, 12] or None; got {round_decimals!r}")
        if not (math.isfinite(flood_sigma) and flood_sigma >= 0):
            problems.append(f"flood_sigma must be >= 0 and finite; got {flood_sigma!r}")
        if flood_sigma > 0 and rng is None:
            problems.append("rng must be given when flood_sigma > 0; got None")
        if problems:
            raise ConfigError(problems)
        self._bundle = bundle
        self.update_bound = float(update_bound)
        self.round_decimals = round_decimals
        self.flood_sigma = float(flood_sigma)
        self._rng = rng
        self._slots = bundle.params.slots

    @classmethod
    def from_config(
        cls, section: SecureAggregationSection, *, rng: np.random.Generator | None = None
    ) -> CkksCodec:
        """Build the codec from ``[secure_aggregation]``, loading ``key_dir``'s client bundle.

        Raises:
            ConfigError: The scheme is not ``ckks`` or ``key_dir`` is empty.
            KeyFileError: The client bundle cannot be loaded.
        """
        if section.scheme != "ckks":
            raise ConfigError(
                f"secure_aggregation.scheme must be 'ckks' for CkksCodec; got {section.scheme!r}"
            )
        if not section.key_dir:
            raise ConfigError(
                "secure_aggregation.key_dir must name a key directory (fedai keys create); got ''"
            )
        return cls(
            load_client_bundle(section.key_dir),
            update_bound=section.update_bound,
            round_decimals=section.round_decimals,
            flood_sigma=section.flood_sigma,
            rng=rng if rng is not None or section.flood_sigma == 0 else np.random.default_rng(),
        )

    @property
    def fingerprint(self) -> bytes:
        """The key-set fingerprint every payload carries."""
        return self._bundle.fingerprint

    @property
    def max_total_weight(self) -> float:
        """Largest total weight N whose worst-case sum ``N * B`` cannot wrap the modulus."""
        return float(2.0**self._bundle.params.magnitude_bits / self.update_bound)

    def encode(self, weights: Sequence[np.ndarray], weight: float) -> Payload:
        """Encrypt ``weight * weights``, packed into 4096-slot ciphertexts.

        Args:
            weights: The local model's arrays (float16/32/64). Not modified.
            weight: This client's aggregation weight ``n_i`` (e.g. its example count).

        Returns:
            ``[header, ciphertext_0, ...]`` as uint8 arrays (see
            :mod:`fedai.crypto.envelope`).

        Raises:
            ConfigError: ``weight`` is not positive, a value is not finite or exceeds the
                public ``update_bound``, or ``weight * update_bound`` exceeds the headroom.
        """
        import tenseal as ts

        weight = float(weight)
        if not (math.isfinite(weight) and weight > 0):
            raise ConfigError(f"aggregation weight must be > 0 and finite; got {weight!r}")
        if weight > self.max_total_weight:
            raise ConfigError(
                f"aggregation weight must be <= {self.max_total_weight:g} "
                f"(CKKS headroom at update_bound {self.update_bound:g}); got "
                f"{weight:g}"
            )
        flat, specs = flatten_bounded(weights, self.update_bound)
        # On the grid, so that the sum of integer-weighted contributions is exact.
        scaled = quantize(flat, self.round_decimals) * weight
        start = time.perf_counter()
        context = self._bundle._context
        blobs = [
            ts.ckks_vector(context, scaled[lo:hi]).serialize()
            for lo, hi in chunk_bounds(scaled.size, self._slots)
        ]
        env = Envelope(
            scheme=Scheme.CKKS,
            kind=PayloadKind.CONTRIBUTION,
            fingerprint=self._bundle.fingerprint,
            n_values=int(scaled.size),
            slots=self._slots,
            n_summands=1,
            specs=tuple(specs),
        )
        payload = env.to_payload(blobs, mac_key=self._bundle._mac_key)
        logger.debug(
            "encrypted %d values into %d ciphertexts (%d bytes) in %.3f s",
            scaled.size,
            len(blobs),
            sum(a.size for a in payload),
            time.perf_counter() - start,
        )
        return payload

    def decode(self, payload: Payload, total_weight: float, shapes: Shapes) -> list[np.ndarray]:
        """Decrypt an aggregate, divide by the total weight, bounds-check, flood and round.

        Args:
            payload: The coordinator's sum (or a single contribution).
            total_weight: ``N``, the sum of the summed contributions' weights.
            shapes: The model's layout, in order: :class:`~fedai.aggregation.ArraySpec`
                entries declare each array's dtype too; bare shapes accept float32 or
                float64 (:data:`~fedai.aggregation.UNDECLARED_ITEMSIZES`).

        Returns:
            New arrays of ``shapes`` in the dtypes recorded at encoding.

        Raises:
            KeyMismatchError: The payload was made under another key set.
            LayoutMismatchError: The aggregate's shapes or dtypes are not the declared
                ones (a relabelled dtype would cost precision).
            CorruptPayloadError: The payload is malformed or unauthenticated, ``N`` is not
                positive or exceeds the headroom, or a decrypted average is not finite or
                exceeds ``update_bound`` (a corrupted ciphertext decrypts to ~1e31).
        """
        total_weight = float(total_weight)
        if not (math.isfinite(total_weight) and total_weight > 0):
            raise CorruptPayloadError(f"total weight must be > 0 and finite; got {total_weight!r}")
        if total_weight > self.max_total_weight:
            raise CorruptPayloadError(
                f"total weight must be <= {self.max_total_weight:g} so "
                f"the CKKS sum cannot wrap; got {total_weight:g}"
            )
        env, blobs = Envelope.from_payload(
            payload,
            scheme=Scheme.CKKS,
            fingerprint=self._bundle.fingerprint,
            mac_key=self._bundle._mac_key,
            slots=self._slots,
        )
        problem = layout_mismatch(env.specs, shapes, "aggregate", undeclared=UNDECLARED_ITEMSIZES)
        if problem is not None:
            raise LayoutMismatchError(problem)
        context = self._bundle._context
        parts = []
        for j, (lo, hi) in enumerate(chunk_bounds(env.n_values, self._slots)):
            vec = _deserialize(context, blobs[j], hi - lo, f"aggregate ciphertext {j}")
            parts.append(np.asarray(vec.decrypt(), dtype=np.float64))
        total = np.concatenate(parts)
        avg = total / total_weight
        slack = 10.0 ** -(self.round_decimals or 6)
        finite = bool(np.all(np.isfinite(avg)))
        worst = float(np.max(np.abs(avg))) if finite else math.inf
        if worst > self.update_bound + slack:
            raise CorruptPayloadError(
                f"decrypted average must be within "
                f"+-{self.update_bound:g} (secure_aggregation.update_bound); got "
                f"{worst:.3g}: a summed ciphertext is corrupt"
            )
        if self.flood_sigma > 0:
            assert self._rng is not None  # enforced in __init__
            total = total + self._rng.normal(0.0, self.flood_sigma * total_weight, total.shape)
        # Snap the decrypted sum back onto the clients' grid: exact for integer weights.
        return unflatten(exact_average(total, total_weight, self.round_decimals), env.specs)


class CkksSum:
    """Coordinator side of CKKS secure aggregation: authenticates and adds, holds no key.

    Args:
        bundle: The coordinator bundle (keyless context). A client bundle is refused.

    Raises:
        KeyFileError: ``bundle`` is not a keyless coordinator bundle.
    """

    name = "ckks"

    def __init__(self, bundle: CoordinatorBundle) -> None:
        if not isinstance(bundle, CoordinatorBundle):
            raise KeyFileError(
                f"coordinator bundle must be a keyless CoordinatorBundle; got "
                f"{type(bundle).__name__}"
            )
        if bundle.is_private():
            raise KeyFileError(
                "coordinator bundle must hold no secret key; got one holding a secret key"
            )
        self._bundle = bundle
        self._slots = bundle.params.slots

    @classmethod
    def from_config(cls, section: SecureAggregationSection) -> CkksSum:
        """Build the coordinator side from ``[secure_aggregation]`` (loads the keyless bundle).

        Raises:
            ConfigError: The scheme is not ``ckks`` or ``key_dir`` is empty.
            KeyFileError: The coordinator bundle cannot be loaded or holds a secret key.
        """
        if section.scheme != "ckks":
            raise ConfigError(
                f"secure_aggregation.scheme must be 'ckks' for CkksSum; got {section.scheme!r}"
            )
        if not section.key_dir:
            raise ConfigError(
                "secure_aggregation.key_dir must name a key directory (fedai keys create); got ''"
            )
        return cls(load_coordinator_bundle(section.key_dir))

    @property
    def fingerprint(self) -> bytes:
        """The key-set fingerprint payloads must carry."""
        return self._bundle.fingerprint

    def is_private(self) -> bool:
        """Return whether this object's context holds a secret key (always False)."""
        return self._bundle.is_private()

    def _open(self, payload: Payload) -> tuple[Envelope, list[np.ndarray]]:
        return Envelope.from_payload(
            payload,
            scheme=Scheme.CKKS,
            fingerprint=self._bundle.fingerprint,
            mac_key=self._bundle._mac_key,
            slots=self._slots,
        )

    def _open_contribution(self, payload: Payload, where: str) -> tuple[Envelope, list[np.ndarray]]:
        env, blobs = self._open(payload)
        if env.kind is not PayloadKind.CONTRIBUTION or env.n_summands != 1:
            raise CorruptPayloadError(
                f"{where} must be one client contribution (kind 1, 1 summand); got kind "
                f"{int(env.kind)} with {env.n_summands} summands"
            )
        return env, blobs

    def check(self, payload: Payload, shapes: Shapes | None = None) -> None:
        """Validate one client contribution before it is summed.

        Checks structure, key fingerprint, value/ciphertext counts and the authentication
        tag over every byte; does not decrypt (it cannot). The ciphertexts themselves are
        validated when :meth:`sum` loads them (:func:`~fedai.crypto.ckks_wire.
        load_ckks_vector`), before any arithmetic.

        Args:
            payload: One client's contribution.
            shapes: The model's declared layout; :class:`~fedai.aggregation.ArraySpec`
                entries declare dtypes too (item sizes are part of the layout).

        Raises:
            KeyMismatchError: The payload was made under another key set.
            LayoutMismatchError: Its shapes or dtypes are not ``shapes``'.
            CorruptPayloadError: It is empty, truncated, random, miscounted, not a
                single contribution, or its tag does not match.
        """
        env, _ = self._open_contribution(payload, "payload")
        if shapes is not None:
            problem = layout_mismatch(env.specs, shapes, "payload")
            if problem is not None:
                raise LayoutMismatchError(problem)

    def sum(self, payloads: Sequence[Payload], *, shapes: Shapes | None = None) -> Payload:
        """Add checked contributions ciphertext by ciphertext.

        Args:
            payloads: Contributions that passed :meth:`check`, all with the same layout.
            shapes: The model's declared layout (shapes and, as
                :class:`~fedai.aggregation.ArraySpec`, dtypes): every contribution must
                carry it. Without it the contributions must agree among themselves
                (:func:`~fedai.crypto.envelope.reference_layout`).

        Returns:
            An aggregate payload (same layout, ``n_summands`` = total summed).

        Raises:
            KeyMismatchError: A payload was made under another key set.
            ContributionError: Payload ``index`` is foreign, corrupt, not a single
                contribution, differs from the declared layout (or, with none declared,
                from the majority's), or a ciphertext fails validation; nothing was summed.
            CorruptPayloadError: No payloads, or no declared dtypes and no majority layout.
        """
        if not payloads:
            raise CorruptPayloadError("sum needs at least one payload; got none")
        start = time.perf_counter()
        opened = []
        for i, p in enumerate(payloads):
            with blame(i, also=_NATIVE_ERRORS):
                opened.append(self._open_contribution(p, f"payload {i}"))
        first = reference_layout([env for env, _ in opened], shapes)
        context = self._bundle._context
        out: list[bytes] = []
        for j, (lo, hi) in enumerate(chunk_bounds(first.n_values, self._slots)):
            # Accumulate into the first freshly loaded vector: CKKSVector.copy() segfaults
            # on a keyless context (TenSEAL 0.3.18), so never copy here. Every vector is
            # validated as it loads (load_ckks_vector) before it is added.
            with blame(0, also=_NATIVE_ERRORS):
                acc = _deserialize(context, opened[0][1][j], hi - lo, f"payload 0 ciphertext {j}")
            for i in range(1, len(opened)):
                with blame(i, also=_NATIVE_ERRORS):
                    acc.add_(
                        _deserialize(
                            context, opened[i][1][j], hi - lo, f"payload {i} ciphertext {j}"
                        )
                    )
            out.append(acc.serialize())
        total = len(opened)  # one summand each (checked above)
        if total > MAX_SUMMANDS:
            raise CorruptPayloadError(f"sum must have <= {MAX_SUMMANDS} summands; got {total}")
        agg = Envelope(
            scheme=Scheme.CKKS,
            kind=PayloadKind.AGGREGATE,
            fingerprint=self._bundle.fingerprint,
            n_values=first.n_values,
            slots=self._slots,
            n_summands=total,
            specs=first.specs,
        )
        logger.debug(
            "summed %d contributions of %d values in %.3f s",
            len(payloads),
            first.n_values,
            time.perf_counter() - start,
        )
        return agg.to_payload(out, mac_key=self._bundle._mac_key)


def _create_keys(
    out_dir: str | os.PathLike[str], *, force: bool = False, overwrite: bool = False, **params: Any
) -> ClientBundle:
    return create_ckks_keys(out_dir, force=force, overwrite=overwrite, **params)


def _bit_sizes(text: str) -> tuple[int, ...]:
    import argparse

    try:
        return tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError as err:
        raise argparse.ArgumentTypeError(
            f"must be comma-separated integers like 60,40,40,60; got {text!r}"
        ) from err


def _scale(bits: int) -> float:
    if bits < 1:
        raise ConfigError(f"--scale-bits must be >= 1; got {bits}")
    return 2.0**bits


SCHEME = SchemeSpec(
    name="ckks",
    summary="TenSEAL CKKS: approximate arithmetic, the coordinator holds no key",
    wire_code=int(Scheme.CKKS),
    coordinator_sum=CkksSum.from_config,
    client_codec=CkksCodec.from_config,
    create_keys=_create_keys,
    describe_keys=describe,
    key_options=(
        KeyOption(
            flag="--poly-modulus-degree",
            kwarg="poly_modulus_degree",
            type=int,
            metavar="N",
            help="CKKS ring degree (default: 8192, 4096 slots)",
        ),
        KeyOption(
            flag="--coeff-mod-bit-sizes",
            kwarg="coeff_mod_bit_sizes",
            type=_bit_sizes,
            metavar="BITS",
            help="CKKS: comma-separated prime sizes, last = special prime (default: 60,50,60: "
            "no multiplication is ever needed, so two data primes are enough; 60,40 with "
            "--scale-bits 36 cuts the wire size 2x more)",
        ),
        KeyOption(
            flag="--scale-bits",
            kwarg="global_scale",
            type=int,
            metavar="BITS",
            convert=_scale,
            help="CKKS: log2 of the scale (default: 40)",
        ),
        KeyOption(
            flag="--encryption",
            kwarg="encryption",
            choices=("symmetric", "public-key"),
            help="CKKS: symmetric (default): no public key is made; 2x faster, 10x less "
            "noise. public-key: textbook CKKS",
        ),
    ),
)


__all__ = ["SCHEME", "CkksCodec", "CkksSum"]

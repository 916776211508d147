"""Build the aggregation pair for a config: coordinator summer and client codec.

The coordinator's :class:`SecureSum` and the clients' :class:`ClientCodec` (see
:mod:`fedai.aggregation`).

``none`` aggregates in the clear. Secure schemes live in :mod:`fedai.crypto` and are
imported only when configured (TenSEAL/phe are heavy).
"""

from __future__ import annotations

from dataclasses import replace

from fedai.aggregation import ClientCodec, PlainCodec, PlainSum, SecureSum
from fedai.config import SecureAggregationSection
from fedai.errors import ConfigError


def _key_dir(section: SecureAggregationSection, override: str | None) -> str:
    key_dir = override or section.key_dir
    if not key_dir:
        raise ConfigError(
            f"secure_aggregation.key_dir must name a key directory (made by "
            f"`fedai keys create --scheme {section.scheme}`) when scheme is "
            f"{section.scheme!r}; got none"
        )
    return key_dir


def coordinator_sum(section: SecureAggregationSection, *, key_dir: str | None = None) -> SecureSum:
    """Return the coordinator-side summer for ``section.scheme`` (public material only)."""
    if section.scheme == "none":
        return PlainSum()
    if section.scheme == "ckks":
        from fedai.crypto.ckks import CkksSum

        return CkksSum.from_config(replace(section, key_dir=_key_dir(section, key_dir)))
    raise ConfigError(
        f"secure_aggregation.scheme {section.scheme!r} is not available in this "
        "build; use none or ckks"
    )


def client_codec(section: SecureAggregationSection, *, key_dir: str | None = None) -> ClientCodec:
    """Return the client-side codec for ``section.scheme`` (reads the secret bundle)."""
    if section.scheme == "none":
        return PlainCodec(bound=section.update_bound, round_decimals=section.round_decimals)
    if section.scheme == "ckks":
        from fedai.crypto.ckks import CkksCodec

        return CkksCodec.from_config(replace(section, key_dir=_key_dir(section, key_dir)))
    raise ConfigError(
        f"secure_aggregation.scheme {section.scheme!r} is not available in this "
        "build; use none or ckks"
    )


__all__ = ["client_codec", "coordinator_sum"]

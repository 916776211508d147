"""The secure-aggregation scheme registry: one entry per scheme, one place to add one.

Each scheme is a :class:`SchemeSpec` held by its own module (``SCHEME``) and named in
:data:`REGISTRY`; everything that varies by scheme comes from there:

* the coordinator's :class:`~fedai.aggregation.SecureSum` and the clients'
  :class:`~fedai.aggregation.ClientCodec` (:func:`coordinator_sum`, :func:`client_codec`);
* key creation and the key description ``fedai keys show`` prints, and the scheme's own
  ``fedai keys create`` options (:class:`KeyOption`);
* the envelope's scheme code (:mod:`fedai.crypto.envelope`);
* configuration checks that need the whole experiment (e.g. Paillier's headroom against
  the number of clients), run when an :class:`~fedai.config.ExperimentConfig` is built,
  and checks against the clients' training-set sizes (their aggregation weights), run
  before the first round (:func:`weight_problems`).

The config's allowed ``secure_aggregation.scheme`` values, a node policy's
``require-scheme`` values, the CLI's ``--scheme`` choices and their error messages all
come from :func:`scheme_names` / :func:`key_scheme_names`.

Adding a scheme ``foo``: write ``fedai/crypto/foo.py`` (its codec, sum, and a ``SCHEME``
spec; key handling in the same module or a sibling such as ``foo_keys.py``) and add one
line ``"foo": "fedai.crypto.foo"`` to :data:`REGISTRY`. Nothing else changes.

Scheme modules are imported only when a scheme is used (TenSEAL/phe are heavy), so
:func:`scheme_names` costs nothing.
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Protocol

from fedai.aggregation import ClientCodec, PlainCodec, PlainSum, SecureSum
from fedai.errors import ConfigError

if TYPE_CHECKING:
    import os

    from fedai.config import ExperimentConfig, SecureAggregationSection
    from fedai.crypto.bundle import BundleInfo

#: Scheme name -> module holding its ``SCHEME`` spec, in the order help texts list them.
REGISTRY: dict[str, str] = {
    "none": "fedai.schemes",
    "ckks": "fedai.crypto.ckks",
    "paillier": "fedai.crypto.paillier",
}


class KeyBundle(Protocol):
    """What every scheme's client bundle offers callers of ``create_keys``."""

    @property
    def fingerprint(self) -> bytes:
        """The 32-byte key-set fingerprint."""


class CreateKeys(Protocol):
    """A scheme's key creation: ``(out_dir, *, force, overwrite, **params) -> bundle``."""

    def __call__(
        self,
        out_dir: str | os.PathLike[str],
        *,
        force: bool = ...,
        overwrite: bool = ...,
        **params: Any,
    ) -> KeyBundle:
        """Create the key set in ``out_dir`` and return its client bundle."""


@dataclass(frozen=True, slots=True, kw_only=True)
class KeyOption:
    """One scheme-specific ``fedai keys create`` option.

    Attributes:
        flag: The option, e.g. ``"--key-bits"`` (unique across schemes).
        kwarg: The ``create_keys`` keyword it sets.
        help: Help text.
        type: Parser of the command-line string.
        metavar: Placeholder in the help text.
        choices: Allowed values, if a fixed set.
        convert: Maps the parsed value to the keyword's value (e.g. scale bits to scale).
    """

    flag: str
    kwarg: str
    help: str
    type: Callable[[str], Any] = str
    metavar: str | None = None
    choices: tuple[str, ...] | None = None
    convert: Callable[[Any], Any] | None = None


def _no_problems(cfg: ExperimentConfig) -> list[str]:
    return []


def _no_weight_problems(cfg: ExperimentConfig, train_sizes: Sequence[int]) -> list[str]:
    return []


@dataclass(frozen=True, slots=True, kw_only=True)
class SchemeSpec:
    """Everything fedai needs to know about one secure-aggregation scheme.

    Attributes:
        name: The registry name (``secure_aggregation.scheme``).
        summary: One line for help texts.
        coordinator_sum: Builds the coordinator's summer from the config section (its
            ``key_dir`` already resolved); loads public material only.
        client_codec: Builds a client's codec from the config section (loads the secret
            bundle).
        wire_code: The envelope's scheme code (unique; None for ``none``).
        create_keys: Key creation, or None for a scheme without keys.
        describe_keys: ``fedai keys show``'s description of one bundle: a JSON-able dict
            with at least ``summary`` (one line) and ``security`` (one line).
        key_options: The scheme's own ``fedai keys create`` options.
        config_problems: Checks of a whole experiment config under this scheme (each
            problem names its setting).
        weight_problems: Checks of the config against the clients' training-set sizes
            (their aggregation weights), run before the first round.
    """

    name: str
    summary: str
    coordinator_sum: Callable[[SecureAggregationSection], SecureSum]
    client_codec: Callable[[SecureAggregationSection], ClientCodec]
    wire_code: int | None = None
    create_keys: CreateKeys | None = None
    describe_keys: Callable[[BundleInfo], dict[str, Any]] | None = None
    key_options: tuple[KeyOption, ...] = ()
    config_problems: Callable[[ExperimentConfig], list[str]] = _no_problems
    weight_problems: Callable[[ExperimentConfig, Sequence[int]], list[str]] = _no_weight_problems


SCHEME = SchemeSpec(
    name="none",
    summary="no encryption: the coordinator sums plaintext updates (FedAvg)",
    coordinator_sum=lambda section: PlainSum(),
    client_codec=lambda section: PlainCodec(
        bound=section.update_bound, round_decimals=section.round_decimals
    ),
)


def scheme_names() -> tuple[str, ...]:
    """Every registered scheme name, ``none`` first (imports no scheme module)."""
    return tuple(REGISTRY)


@functools.cache
def get_scheme(name: str) -> SchemeSpec:
    """Return the spec of scheme ``name``.

    Raises:
        ConfigError: ``name`` is not registered (the message lists the registered ones).
    """
    module = REGISTRY.get(name)
    if module is None:
        raise ConfigError(_unknown("secure_aggregation.scheme", name, scheme_names()))
    spec = importlib.import_module(module).SCHEME
    if not isinstance(spec, SchemeSpec) or spec.name != name:
        raise TypeError(f"{module}.SCHEME must be the SchemeSpec of {name!r}; got {spec!r}")
    return spec


def key_scheme_names() -> tuple[str, ...]:
    """The registered schemes that have keys (``fedai keys create --scheme`` choices)."""
    return tuple(n for n in REGISTRY if get_scheme(n).create_keys is not None)


def key_scheme(name: str, *, setting: str = "--scheme") -> SchemeSpec:
    """Return the spec of a scheme with keys; ``setting`` names the option in errors.

    Raises:
        ConfigError: ``name`` is not a registered scheme with keys.
    """
    names = key_scheme_names()
    if name not in names:
        raise ConfigError(_unknown(setting, name, names))
    return get_scheme(name)


def _unknown(setting: str, name: object, names: tuple[str, ...]) -> str:
    return f"{setting} must be one of {', '.join(repr(n) for n in names)}; got {name!r}"


def config_problems(cfg: ExperimentConfig) -> list[str]:
    """Every problem of ``cfg`` under its scheme (an unknown scheme is one problem)."""
    name = cfg.secure_aggregation.scheme
    if name not in REGISTRY:
        return [_unknown("secure_aggregation.scheme", name, scheme_names())]
    return get_scheme(name).config_problems(cfg)


def weight_problems(cfg: ExperimentConfig, train_sizes: Sequence[int]) -> list[str]:
    """Problems of ``cfg``'s scheme with clients holding ``train_sizes`` training examples.

    Run before the first round, once the sizes are known (e.g. a headroom that a round's
    total weight could overflow); each problem names its setting.
    """
    name = cfg.secure_aggregation.scheme
    if name not in REGISTRY:
        return [_unknown("secure_aggregation.scheme", name, scheme_names())]
    return get_scheme(name).weight_problems(cfg, train_sizes)


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
    """Return the coordinator-side summer for ``section.scheme`` (public material only).

    Raises:
        ConfigError: Unknown scheme, or a secure scheme without a key directory.
        KeyFileError: The coordinator bundle cannot be loaded.
    """
    spec = get_scheme(section.scheme)
    if spec.create_keys is not None:
        section = replace(section, key_dir=_key_dir(section, key_dir))
    return spec.coordinator_sum(section)


def client_codec(section: SecureAggregationSection, *, key_dir: str | None = None) -> ClientCodec:
    """Return the client-side codec for ``section.scheme`` (reads the secret bundle).

    Raises:
        ConfigError: Unknown scheme, or a secure scheme without a key directory.
        KeyFileError: The client bundle cannot be loaded.
    """
    spec = get_scheme(section.scheme)
    if spec.create_keys is not None:
        section = replace(section, key_dir=_key_dir(section, key_dir))
    return spec.client_codec(section)


__all__ = [
    "REGISTRY",
    "CreateKeys",
    "KeyBundle",
    "KeyOption",
    "SchemeSpec",
    "client_codec",
    "config_problems",
    "coordinator_sum",
    "get_scheme",
    "key_scheme",
    "key_scheme_names",
    "scheme_names",
    "weight_problems",
]

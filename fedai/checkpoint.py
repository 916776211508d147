"""Coordinator checkpoints and the final aggregate: what a run leaves on disk to go on.

Two files, one container format:

* ``<run dir>/checkpoint/checkpoint.npz`` (:class:`Checkpoint`), rewritten after every
  completed round (accepted, failed or skipped) and once after discovery (round 0): the
  global model *as the coordinator holds it* (ciphertexts under HE: never decrypted
  here), the server optimiser's state (the same), the run id, the last completed round,
  the round records, the coordinator's per-client view (exhausted marks, latest privacy
  reports) and the model spec. ``fedai simulate --resume`` and the ``flwr run``
  ServerApp continue from it.
* ``<run dir>/final-aggregate.npz`` (:class:`FinalAggregate`): the final global
  aggregate and what decoding it needs (total weight, spec, shapes, scheme and its
  settings, key fingerprint). :func:`write_model` turns it into ``model.pt`` with the
  scheme's client codec; it is the one place fedai decodes a final model (``fedai
  simulate``, the ServerApp in the clear and ``fedai model decrypt`` all call it).

Container: an uncompressed ``.npz`` (read with ``allow_pickle=False``) holding a
``meta`` array (UTF-8 JSON: format tag, version, SHA-256 of every other array) and the
payload arrays. It is written atomically (:func:`fedai.fileio.atomic_write`) with mode
0600, so a crash leaves the previous checkpoint or the new one, never a torn file. On
load every problem is a :class:`~fedai.errors.CheckpointError` naming the file: not an
npz, a foreign or future format, a missing field, arrays that do not match their digest.
A checkpoint of another experiment config is refused (:meth:`Checkpoint.check_config`
compares :func:`config_hash`, and names the settings that differ).

No Flower here: :mod:`server.checkpointing` maps these to the round loop's objects.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import math
import struct
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fedai.errors import CheckpointError
from fedai.fileio import atomic_write, make_dir

logger = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "fedai.checkpoint"
CHECKPOINT_VERSION = 1
AGGREGATE_FORMAT = "fedai.final-aggregate"
AGGREGATE_VERSION = 1
CHECKPOINT_DIR = "checkpoint"
CHECKPOINT_FILE = "checkpoint.npz"
AGGREGATE_FILE = "final-aggregate.npz"
FILE_MODE = 0o600  # the model (plaintext in the clear) and the run's records
DIR_MODE = 0o700
#: Settings that say where things are or how fast to go, not what the experiment is:
#: a resumed run may change them (the key set itself is checked by its fingerprint).
RUNTIME_SETTINGS = (
    # where things are and how they are run, not what is computed: a resume may change them
    ("secure_aggregation", "key_dir"),
    ("secure_aggregation", "workers"),
    ("experiment", "round_timeout"),
    ("experiment", "max_missed_rounds"),
    ("experiment", "retry_unavailable_every"),
    ("monitoring", "metrics_port"),
    ("monitoring", "metrics_host"),
    ("monitoring", "log_format"),
)
_MAX_META_BYTES = 64 << 20
#: Longest run id or scheme name (clients refuse run ids above 64 characters,
#: :data:`fedai.privacy.ledger.MAX_ID_CHARS`; both are printed to the user's terminal).
_MAX_LABEL_CHARS = 64
_ENVELOPE_MAGIC = b"FEDAIENC"  # fedai.crypto.envelope.MAGIC (not imported: no TenSEAL here)
_FINGERPRINT_AT = struct.calcsize(">8sHBB")  # magic, version, scheme, kind, then 32 bytes


# ---------------------------------------------------------------------- config identity
def _experiment_settings(config: Mapping[str, Any]) -> dict[str, Any]:
    """``config`` without :data:`RUNTIME_SETTINGS`."""
    out = {k: dict(v) if isinstance(v, Mapping) else v for k, v in config.items()}
    for section, key in RUNTIME_SETTINGS:
        if isinstance(out.get(section), dict):
            out[section].pop(key, None)
    return out


def config_hash(config: Mapping[str, Any]) -> str:
    """SHA-256 (hex) of an experiment config (``ExperimentConfig.to_dict()``).

    Canonical JSON (sorted keys, no spaces) of every setting except
    :data:`RUNTIME_SETTINGS`.
    """
    text = json.dumps(_experiment_settings(config), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def config_differences(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """``section.key: old -> new`` for every experiment setting that differs."""
    a, b = _flat(_experiment_settings(old)), _flat(_experiment_settings(new))
    return [
        f"{k}: {a.get(k, '(unset)')!r} -> {b.get(k, '(unset)')!r}"
        for k in sorted(set(a) | set(b))
        if a.get(k) != b.get(k)
    ]


def _flat(config: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for section, values in config.items():
        if isinstance(values, Mapping):
            out.update({f"{section}.{k}": v for k, v in values.items()})
        else:
            out[section] = values
    return out


def payload_fingerprint(payload: Sequence[np.ndarray] | None) -> str:
    """The key-set fingerprint (hex) an encrypted payload's envelope header names.

    Read, not authenticated: for naming the key set in files and messages; decoding
    authenticates. ``""`` for a plaintext payload (or none).
    """
    if not payload:
        return ""
    head = payload[0]
    if not isinstance(head, np.ndarray) or head.dtype != np.uint8:
        return ""
    raw = head[: _FINGERPRINT_AT + 32].tobytes()
    if not raw.startswith(_ENVELOPE_MAGIC) or len(raw) < _FINGERPRINT_AT + 32:
        return ""
    return raw[_FINGERPRINT_AT:].hex()


# ---------------------------------------------------------------------- container
def _digest(arrays: Mapping[str, np.ndarray]) -> str:
    h = hashlib.sha256()
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        h.update(f"{name}|{a.dtype.str}|{list(a.shape)}|".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def write_container(path: Path, meta: Mapping[str, Any], arrays: Mapping[str, np.ndarray]) -> Path:
    """Write ``meta`` (JSON) and ``arrays`` to ``path`` atomically, mode 0600.

    Raises:
        CheckpointError: the file cannot be written (names it).
    """
    body = {**meta, "digest": _digest(arrays)}
    text = json.dumps(body, sort_keys=True, allow_nan=False).encode("utf-8")
    buf = io.BytesIO()
    members: dict[str, Any] = {"meta": np.frombuffer(text, dtype=np.uint8), **arrays}
    np.savez(buf, **members)
    try:
        atomic_write(path, buf.getvalue(), mode=FILE_MODE)
    except OSError as err:
        raise CheckpointError(f"{path} cannot be written: {err.strerror or err}") from err
    return path


def read_container(
    path: Path, *, fmt: str, version: int
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Read and verify a container written by :func:`write_container`.

    Returns:
        The metadata (without ``digest``) and the arrays by name.

    Raises:
        CheckpointError: naming ``path``: unreadable, not an npz, no metadata, another
            format or version, or arrays that do not match the recorded digest.
    """
    try:
        if path.exists() and not path.is_file():  # a device or FIFO would be read forever
            raise CheckpointError(f"{path} must be a regular file; it is not")
        raw = path.read_bytes()
    except OSError as err:
        raise CheckpointError(f"{path} cannot be read: {err.strerror or err}") from err
    if raw.startswith(np.lib.format.MAGIC_PREFIX):  # read before its header is checked
        raise CheckpointError(f"{path} must be a {fmt} file (.npz); got a bare array")
    try:
        if raw.startswith(b"PK"):
            _check_members(path, raw)
        loaded = np.load(io.BytesIO(raw), allow_pickle=False)
        if not isinstance(loaded, np.lib.npyio.NpzFile):
            raise CheckpointError(f"{path} must be a {fmt} file (.npz); got a bare array")
        with loaded as npz:
            arrays = {name: npz[name] for name in npz.files}
    except CheckpointError:
        raise
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, KeyError) as err:
        raise CheckpointError(
            f"{path} must be a {fmt} file (.npz); it cannot be read as one "
            f"({type(err).__name__}: {str(err)[:80]})"
        ) from err
    meta_array = arrays.pop("meta", None)
    if (
        meta_array is None
        or meta_array.dtype != np.uint8
        or meta_array.ndim != 1
        or meta_array.size > _MAX_META_BYTES
    ):
        raise CheckpointError(f"{path} must hold a 'meta' byte array; it does not")
    try:
        meta = json.loads(meta_array.tobytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{path}: metadata must be UTF-8 JSON; {err}") from err
    if not isinstance(meta, dict):
        raise CheckpointError(f"{path}: metadata must be a JSON object; got {type(meta).__name__}")
    if meta.get("format") != fmt or meta.get("version") != version:
        raise CheckpointError(
            f"{path} must be format {fmt!r} version {version}; got {meta.get('format')!r} "
            f"version {meta.get('version')!r}"
        )
    digest = meta.pop("digest", None)
    if digest != _digest(arrays):
        raise CheckpointError(f"{path}: arrays must match the recorded SHA-256; they do not")
    return meta, arrays


def _check_members(path: Path, raw: bytes) -> None:
    """Refuse members numpy would inflate or allocate beyond what the file holds.

    fedai writes stored (uncompressed) members, so each member's bytes are in ``raw``; a
    deflated member could be a zip bomb, and an array header declaring more values than
    its member holds would make ``np.load`` allocate them all before reading (a
    ``MemoryError``, or the OOM killer, instead of a typed error).

    Raises:
        CheckpointError: naming ``path`` and the member.
        ValueError / zipfile.BadZipFile: not a zip of ``.npy`` members (the caller names
            the file).
    """
    with zipfile.ZipFile(io.BytesIO(raw)) as archive:
        for info in archive.infolist():
            name = _short(info.filename)
            if info.compress_type != zipfile.ZIP_STORED or info.file_size != info.compress_size:
                raise CheckpointError(
                    f"{path}: member {name} must be stored uncompressed, as fedai writes "
                    f"it; got compression method {info.compress_type}"
                )
            if info.file_size > len(raw):
                raise CheckpointError(
                    f"{path}: member {name} must fit in the file ({len(raw)} bytes); it "
                    f"declares {info.file_size}"
                )
            with archive.open(info) as fh:
                version = np.lib.format.read_magic(fh)
                if version == (1, 0):
                    shape, _, dtype = np.lib.format.read_array_header_1_0(fh)
                elif version == (2, 0):
                    shape, _, dtype = np.lib.format.read_array_header_2_0(fh)
                else:
                    raise CheckpointError(
                        f"{path}: member {name} must be a .npy array of format 1.0 or 2.0; "
                        f"got {version}"
                    )
            need = math.prod(shape) * dtype.itemsize
            if need > info.file_size:
                raise CheckpointError(
                    f"{path}: member {name} declares shape {_short(shape)} of {dtype} "
                    f"({need} bytes) but holds {info.file_size} bytes"
                )


def _payload_arrays(prefix: str, payload: Sequence[np.ndarray] | None) -> dict[str, np.ndarray]:
    return {f"{prefix}_{i}": np.asarray(a) for i, a in enumerate(payload or [])}


def _payload_of(
    path: Path, arrays: Mapping[str, np.ndarray], prefix: str, count: int | None
) -> list[np.ndarray] | None:
    if count is None:
        return None
    out: list[np.ndarray] = []
    for i in range(count):
        a = arrays.get(f"{prefix}_{i}")
        if a is None:
            raise CheckpointError(f"{path} must hold array {prefix}_{i}; it does not")
        if a.dtype.kind not in "fu":
            raise CheckpointError(
                f"{path}: {prefix}_{i} must be a float or uint8 array; got {a.dtype}"
            )
        out.append(a)
    return out


class _Fields:
    """Collects every problem of a metadata object, then raises once."""

    def __init__(self, path: Path, meta: Mapping[str, Any]) -> None:
        self.path, self.meta, self.problems = path, meta, list[str]()

    def get(self, key: str, kind: type | tuple[type, ...], *, optional: bool = False) -> Any:
        value = self.meta.get(key)
        if value is None and optional:
            return None
        ok = isinstance(value, kind) and not (isinstance(value, bool) and kind in (int, float))
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            ok, value = True, float(value)
        if not ok:
            name = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
            self.problems.append(f"{key} must be {name}; got {_short(value)}")
        return value

    def count(self, key: str) -> int | None:
        value = self.get(key, int, optional=True)
        if isinstance(value, int) and value < 0:
            self.problems.append(f"{key} must be >= 0; got {value}")
        return value if isinstance(value, int) else None

    def done(self) -> None:
        if self.problems:
            raise CheckpointError(f"{self.path}: " + "; ".join(self.problems))


def _label(fields: _Fields, key: str, allowed: Sequence[str] = ()) -> str:
    """A run id or scheme name: short and printable (it is printed), one of ``allowed``."""
    value = fields.get(key, str)
    if not isinstance(value, str):
        return ""
    if not (0 < len(value) <= _MAX_LABEL_CHARS and value.isprintable()):
        fields.problems.append(
            f"{key} must be a printable string of 1..{_MAX_LABEL_CHARS} characters; "
            f"got {_short(value)}"
        )
    elif allowed and value not in allowed:
        fields.problems.append(f"{key} must be one of {', '.join(allowed)}; got {value!r}")
    return value


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _shapes_of(fields: _Fields, key: str) -> list[tuple[int, ...]]:
    raw = fields.get(key, list)
    try:
        shapes = [tuple(int(d) for d in s) for s in raw]
    except (TypeError, ValueError):
        fields.problems.append(f"{key} must be a list of shapes; got {_short(raw)}")
        return []
    if any(d < 0 for s in shapes for d in s):
        fields.problems.append(f"{key} must hold non-negative dims; got {shapes}")
    return shapes


def _check_views(
    path: Path, *, clients: dict[str, Any], excluded: dict[str, Any], reports: dict[str, Any]
) -> None:
    """The per-client views must have the shapes the round loop reads."""
    problems: list[str] = []
    for cid, view in clients.items():
        if not isinstance(view, dict) or not isinstance(view.get("exhausted", ""), str):
            problems.append(f"clients[{cid!r}] must be an object with an exhausted reason")
            continue
        charges = view.get("charges", 0)
        if isinstance(charges, bool) or not isinstance(charges, int) or charges < 0:
            problems.append(f"clients[{cid!r}].charges must be an integer >= 0; got {charges!r}")
    if not all(isinstance(v, str) for v in excluded.values()):
        problems.append("excluded must map nodes to reasons (strings)")
    for cid, report in reports.items():
        eps = report.get("epsilon") if isinstance(report, dict) else None
        if isinstance(eps, bool) or not isinstance(eps, int | float) or not eps >= 0:
            problems.append(f"privacy_reports[{cid!r}] must be an object with an epsilon >= 0")
    if problems:
        raise CheckpointError(f"{path}: " + "; ".join(problems[:5]))


# ---------------------------------------------------------------------- checkpoint
@dataclass(slots=True, kw_only=True)
class Checkpoint:
    """The coordinator's state after a completed round.

    Attributes:
        run_id: The run's random id, made at its first start and kept across resumes.
        round: The last completed round (0: discovery done, no round run yet).
        config: The experiment config (``ExperimentConfig.to_dict()``).
        config_hash: :func:`config_hash` of ``config``.
        spec: The model spec (``ModelSpec.to_dict()``).
        shapes: The model's array shapes.
        model: The global model payload as the coordinator holds it (ciphertext bytes
            under HE), or None before the first accepted round.
        model_weight: The total weight ``model`` decodes with.
        state: The server optimiser's state payload (encrypted under HE), or None.
        key_fingerprint: Hex fingerprint of the key set (``""`` in the clear).
        records: The round records so far (``RoundRecord.to_dict()``).
        clients: Client id -> ``{"num_train", "num_test", "exhausted"}``, and under DP
            ``"charges"``: the rounds of the run the client replied it trained (what its
            ledger must still hold, sent back to it on resume).
        excluded: Node -> why discovery left it out.
        privacy_reports: Client id -> its latest privacy report.
        seconds: Seconds the round loop has run so far (all starts together).
        started_at: When the run first started (UTC ISO 8601).
        statistics: The summed federated feature statistics as the coordinator holds
            them (ciphertext bytes under HE), or None.
        statistics_weight: Their total weight.
        statistics_view: What the statistics stage ended with (``mode``, contributors;
            ``server.statistics.Statistics.to_dict()``); empty before the stage ran.
    """

    run_id: str
    round: int
    config: dict[str, Any]
    spec: dict[str, Any]
    shapes: list[tuple[int, ...]]
    model: list[np.ndarray] | None = None
    model_weight: float = 0.0
    state: list[np.ndarray] | None = None
    key_fingerprint: str = ""
    records: list[dict[str, Any]] = field(default_factory=list)
    clients: dict[str, dict[str, Any]] = field(default_factory=dict)
    excluded: dict[str, str] = field(default_factory=dict)
    privacy_reports: dict[str, dict[str, Any]] = field(default_factory=dict)
    seconds: float = 0.0
    started_at: str = ""
    config_hash: str = ""
    statistics: list[np.ndarray] | None = None
    statistics_weight: float = 0.0
    statistics_view: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.config_hash:
            self.config_hash = config_hash(self.config)

    # ------------------------------------------------------------------ files
    @staticmethod
    def path_in(run_dir: str | Path) -> Path:
        """Where the checkpoint of the run in ``run_dir`` lives."""
        return Path(run_dir) / CHECKPOINT_DIR / CHECKPOINT_FILE

    def save(self, run_dir: str | Path) -> Path:
        """Write ``run_dir/checkpoint/checkpoint.npz`` atomically (mode 0600).

        Raises:
            CheckpointError: the file cannot be written.
        """
        meta = {
            "format": CHECKPOINT_FORMAT,
            "version": CHECKPOINT_VERSION,
            "run_id": self.run_id,
            "round": self.round,
            "config": self.config,
            "config_hash": self.config_hash,
            "spec": self.spec,
            "shapes": [list(s) for s in self.shapes],
            "model_arrays": None if self.model is None else len(self.model),
            "model_weight": self.model_weight,
            "state_arrays": None if self.state is None else len(self.state),
            "key_fingerprint": self.key_fingerprint,
            "records": self.records,
            "clients": self.clients,
            "excluded": self.excluded,
            "privacy_reports": self.privacy_reports,
            "seconds": self.seconds,
            "started_at": self.started_at,
            "statistics_arrays": None if self.statistics is None else len(self.statistics),
            "statistics_weight": self.statistics_weight,
            "statistics": self.statistics_view,
        }
        arrays = {
            **_payload_arrays("model", self.model),
            **_payload_arrays("state", self.state),
            **_payload_arrays("statistics", self.statistics),
        }
        path = self.path_in(run_dir)
        try:
            make_dir(path.parent, mode=DIR_MODE)
        except OSError as err:
            raise CheckpointError(
                f"{path.parent} cannot be created: {err.strerror or err}"
            ) from err
        path = write_container(path, meta, arrays)
        logger.debug("checkpoint of run %s after round %d: %s", self.run_id, self.round, path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> Checkpoint:
        """Read and validate a checkpoint file.

        Raises:
            CheckpointError: naming the file: unreadable, corrupt, foreign, or a field
                missing or of the wrong type (every problem listed).
        """
        p = Path(path)
        meta, arrays = read_container(p, fmt=CHECKPOINT_FORMAT, version=CHECKPOINT_VERSION)
        f = _Fields(p, meta)
        run_id = _label(f, "run_id")
        rnd = f.get("round", int)
        if isinstance(rnd, int) and rnd < 0:
            f.problems.append(f"round must be >= 0; got {rnd}")
        config = f.get("config", dict)
        stored_hash = f.get("config_hash", str)
        spec = f.get("spec", dict)
        shapes = _shapes_of(f, "shapes")
        model_n, state_n = f.count("model_arrays"), f.count("state_arrays")
        weight = f.get("model_weight", float)
        if isinstance(weight, float) and not (math.isfinite(weight) and weight >= 0):
            f.problems.append(f"model_weight must be finite and >= 0; got {weight}")
        records = f.get("records", list)
        if isinstance(records, list) and not all(isinstance(r, dict) for r in records):
            f.problems.append("records must be a list of objects")
        clients = f.get("clients", dict)
        excluded = f.get("excluded", dict)
        reports = f.get("privacy_reports", dict)
        seconds = f.get("seconds", float)
        started_at = f.get("started_at", str)
        fingerprint = f.get("key_fingerprint", str)
        # Federated feature statistics (absent from checkpoints made before them).
        stats_n = f.count("statistics_arrays")
        stats_weight = f.get("statistics_weight", float, optional=True)
        if isinstance(stats_weight, float) and not (
            math.isfinite(stats_weight) and stats_weight >= 0
        ):
            f.problems.append(f"statistics_weight must be finite and >= 0; got {stats_weight}")
        stats_view = f.get("statistics", dict, optional=True)
        f.done()
        _check_views(p, clients=clients, excluded=excluded, reports=reports)
        if config_hash(config) != stored_hash:
            raise CheckpointError(f"{p}: config_hash must match its config; it does not")
        if isinstance(rnd, int) and len(records) != rnd:
            raise CheckpointError(f"{p}: must hold {rnd} round records; got {len(records)}")
        return cls(
            run_id=run_id,
            round=rnd,
            config=config,
            config_hash=stored_hash,
            spec=spec,
            shapes=shapes,
            model=_payload_of(p, arrays, "model", model_n),
            model_weight=weight,
            state=_payload_of(p, arrays, "state", state_n),
            key_fingerprint=fingerprint,
            records=records,
            clients=clients,
            excluded=excluded,
            privacy_reports=reports,
            seconds=seconds,
            started_at=started_at,
            statistics=_payload_of(p, arrays, "statistics", stats_n),
            statistics_weight=stats_weight or 0.0,
            statistics_view=stats_view or {},
        )

    @classmethod
    def find(cls, run_dir: str | Path) -> Checkpoint | None:
        """The checkpoint in ``run_dir``, or None if it has none (a corrupt one raises)."""
        path = cls.path_in(run_dir)
        return cls.load(path) if path.exists() else None

    def check_config(self, config: Mapping[str, Any], *, where: str | Path = "") -> None:
        """Refuse to continue this checkpoint under another experiment config.

        Raises:
            CheckpointError: the configs' hashes differ; the message names the settings.
        """
        if config_hash(config) == self.config_hash:
            return
        diff = config_differences(self.config, config)
        shown = "; ".join(diff[:5]) + (f"; and {len(diff) - 5} more" if len(diff) > 5 else "")
        raise CheckpointError(
            f"{where or 'the checkpoint'} is run {self.run_id} of another experiment config; "
            f"resume with the same config (differs: {shown})"
        )


# ---------------------------------------------------------------------- final aggregate
@dataclass(slots=True, kw_only=True)
class FinalAggregate:
    """The final global model as the coordinator holds it, and what decoding needs.

    Attributes:
        run_id: The run it ends.
        round: The last completed round.
        scheme: ``secure_aggregation.scheme``.
        secure_aggregation: The ``[secure_aggregation]`` settings (``key_dir`` removed:
            the key holder names its own).
        spec: The model spec (``ModelSpec.to_dict()``).
        shapes: The model's array shapes.
        total_weight: The weight ``payload`` decodes with.
        key_fingerprint: Hex fingerprint of the key set (``""`` in the clear).
        payload: The aggregate (ciphertext bytes under HE).
    """

    run_id: str
    round: int
    scheme: str
    secure_aggregation: dict[str, Any]
    spec: dict[str, Any]
    shapes: list[tuple[int, ...]]
    total_weight: float
    payload: list[np.ndarray]
    key_fingerprint: str = ""

    @staticmethod
    def path_in(run_dir: str | Path) -> Path:
        """Where the final aggregate of the run in ``run_dir`` lives."""
        return Path(run_dir) / AGGREGATE_FILE

    def save(self, run_dir: str | Path) -> Path:
        """Write ``run_dir/final-aggregate.npz`` atomically (mode 0600)."""
        section = {k: v for k, v in self.secure_aggregation.items() if k != "key_dir"}
        meta = {
            "format": AGGREGATE_FORMAT,
            "version": AGGREGATE_VERSION,
            "run_id": self.run_id,
            "round": self.round,
            "scheme": self.scheme,
            "secure_aggregation": section,
            "spec": self.spec,
            "shapes": [list(s) for s in self.shapes],
            "total_weight": self.total_weight,
            "key_fingerprint": self.key_fingerprint,
            "payload_arrays": len(self.payload),
        }
        return write_container(
            self.path_in(run_dir), meta, _payload_arrays("payload", self.payload)
        )

    @classmethod
    def load(cls, path: str | Path) -> FinalAggregate:
        """Read and validate a final-aggregate file (a run dir names its file).

        Raises:
            CheckpointError: naming the file, as :meth:`Checkpoint.load`.
        """
        p = Path(path)
        if p.is_dir():
            p = cls.path_in(p)
        meta, arrays = read_container(p, fmt=AGGREGATE_FORMAT, version=AGGREGATE_VERSION)
        from fedai.schemes import scheme_names

        f = _Fields(p, meta)
        run_id, rnd = _label(f, "run_id"), f.get("round", int)
        scheme = _label(f, "scheme", scheme_names())
        section, spec = f.get("secure_aggregation", dict), f.get("spec", dict)
        shapes = _shapes_of(f, "shapes")
        weight = f.get("total_weight", float)
        if isinstance(weight, float) and not (math.isfinite(weight) and weight > 0):
            f.problems.append(f"total_weight must be finite and > 0; got {weight}")
        fingerprint = f.get("key_fingerprint", str)
        n = f.count("payload_arrays")
        if n is None or n == 0:
            f.problems.append("payload_arrays must be >= 1")
        f.done()
        payload = _payload_of(p, arrays, "payload", n) or []
        if scheme != "none" and payload_fingerprint(payload) != fingerprint:
            raise CheckpointError(
                f"{p}: the payload's key fingerprint must be the recorded "
                f"{fingerprint[:16]}; got {payload_fingerprint(payload)[:16] or 'none'}"
            )
        return cls(
            run_id=run_id,
            round=rnd,
            scheme=scheme,
            secure_aggregation=section,
            spec=spec,
            shapes=shapes,
            total_weight=weight,
            payload=payload,
            key_fingerprint=fingerprint,
        )

    def decode(self, *, key_dir: str | None = None) -> list[np.ndarray]:
        """Decode the aggregate with the scheme's client codec (a key holder's bundle).

        The codec authenticates the envelope and checks its key fingerprint, shapes and
        bounds before any native call (:mod:`fedai.crypto.ckks_wire`,
        :mod:`fedai.crypto.paillier`).

        Raises:
            ConfigError: the stored settings are invalid, or a secure scheme without keys.
            KeyFileError: the key directory cannot be loaded.
            KeyMismatchError: the keys are not the run's.
            CorruptPayloadError: the aggregate fails authentication or bounds.
        """
        from fedai.config import SecureAggregationSection
        from fedai.errors import ConfigError
        from fedai.schemes import client_codec

        settings = {**self.secure_aggregation, "scheme": self.scheme, "key_dir": key_dir or ""}
        # A runtime setting: how many processes the key holder runs is the holder's choice,
        # not the file's (the default, one per core).
        settings.pop("workers", None)
        try:
            section = SecureAggregationSection(**settings)
            problems = section.problems()
        except TypeError as err:
            raise ConfigError(f"stored secure_aggregation settings are invalid: {err}") from err
        if problems:
            raise ConfigError(problems)
        codec = client_codec(section, key_dir=key_dir)
        try:
            return codec.decode(self.payload, self.total_weight, self.shapes)
        finally:
            close = getattr(codec, "close", None)  # Paillier's worker processes
            if callable(close):
                close()


def write_model(
    run_dir: str | Path,
    *,
    key_dir: str | None = None,
    out_dir: str | Path | None = None,
    aggregate: FinalAggregate | None = None,
) -> Path:
    """Decode the run's final aggregate and write ``model.pt`` + ``model.json``.

    The one place a final model is decoded: the coordinator in the clear, ``fedai
    simulate`` (the operator's bundle) and ``fedai model decrypt`` (a key holder) call it.

    Args:
        run_dir: The run's results directory (holding ``final-aggregate.npz``).
        key_dir: The key holder's key directory (unused in the clear).
        out_dir: Where to write the model (default ``run_dir``).
        aggregate: The run's aggregate if already loaded (else read from ``run_dir``).

    Returns:
        The path of ``model.pt``.

    Raises:
        CheckpointError: the aggregate file is missing or invalid.
        KeyFileError / KeyMismatchError / CorruptPayloadError: as :meth:`FinalAggregate.decode`.
        ModelError: the stored spec is invalid.
    """
    import torch

    from fedai.models import MODEL_FILE, SPEC_FILE, ModelSpec, build_model, save_model, set_weights

    out = Path(out_dir) if out_dir else Path(run_dir)
    for name in (MODEL_FILE, SPEC_FILE):
        # The run dir may come from the coordinator: a planted link would have the key
        # holder's model written over a file of the link's choosing.
        if (out / name).is_symlink():
            raise CheckpointError(
                f"{out / name} must not be a symbolic link (the model would be written "
                "through it); remove it or write elsewhere with --out"
            )
    if aggregate is None:
        aggregate = FinalAggregate.load(run_dir)
    where = FinalAggregate.path_in(run_dir)
    spec = ModelSpec.from_dict(aggregate.spec)
    try:
        # Shapes only (the meta device allocates nothing): the real model is built after
        # decoding, so its size is backed by the payload, not by the file's word.
        with torch.device("meta"):
            shapes = [tuple(v.shape) for v in build_model(spec).state_dict().values()]
    except (RuntimeError, ValueError, OverflowError) as err:
        raise CheckpointError(
            f"{where}: spec must describe a model that can be built; got {spec} ({err})"
        ) from err
    if shapes != aggregate.shapes:
        raise CheckpointError(
            f"{where}: shapes must be the spec's {_short(shapes)}; got {_short(aggregate.shapes)}"
        )
    weights = aggregate.decode(key_dir=key_dir)
    model = build_model(spec)
    set_weights(model, weights)
    return save_model(out, model, spec)


__all__ = [
    "AGGREGATE_FILE",
    "CHECKPOINT_DIR",
    "CHECKPOINT_FILE",
    "Checkpoint",
    "FinalAggregate",
    "config_differences",
    "config_hash",
    "payload_fingerprint",
    "read_container",
    "write_container",
    "write_model",
]

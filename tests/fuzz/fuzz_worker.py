"""The fuzz worker process: load the fixtures once, then run trials sent over a pipe.

Runs in a child process (see :mod:`fuzz_supervisor`) so that a segfault, an abort or a
hang in native code kills the worker, not the campaign or pytest. Each trial is
``(target, mutation)``; the reply is a dict with ``outcome`` one of

* ``ok``: the decoder accepted the input and the result passed the sanity check;
* ``typed``: the decoder raised a :class:`fedai.errors.FedAIError` (``error`` names it);
* ``untyped``: any other exception (``error``, ``message``, ``where``);
* ``insane``: accepted, but the result is unusable (see the ``_sanity_*`` methods), or
  the coordinator's sum blamed an honest contribution (``ContributionError.index``) even
  when two honest payloads outvote the mutated one;
* ``harness``: the mutation did not apply (a bug in the fuzz suite, never a finding).

Before the sanity check the worker sends ``("stage", "sanity")`` so that the parent can
tell a crash in the decoder from a crash while checking what it accepted.
"""

from __future__ import annotations

import faulthandler
import inspect
import os
import resource
import signal
import time
import traceback
from collections.abc import Callable
from functools import cached_property
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import numpy as np
import tenseal as ts
from fuzz_fixtures import (
    load_envelope_fixture,
    load_expected_average,
    load_holder_arrays,
    load_holder_fixture,
)
from fuzz_mutations import (
    ENVELOPE_TARGETS,
    HOLDER_TARGETS,
    EnvelopeInput,
    HolderInput,
    apply_envelope,
    apply_holder,
)
from fuzz_wire import Mutation

from fedai.crypto.ckks import CkksCodec, CkksSum
from fedai.crypto.envelope import Envelope, PayloadKind, Scheme
from fedai.crypto.keys import load_client_bundle, load_coordinator_bundle
from fedai.errors import FedAIError
from fedai.inference import EncryptedBatch, EncryptedScores, Layout, LinearLayer, ModelHolder
from fedai.inference.encoding import chunk_rows
from fedai.inference.querier import Querier

MESSAGE_CHARS = 400
CHANGED_ATOL = 1e-5


def where(err: BaseException) -> str:
    """The innermost traceback frame inside fedai (else the innermost one)."""
    frames = traceback.extract_tb(err.__traceback__)
    inside = [f for f in frames if "/fedai/" in f.filename] or frames
    if not inside:
        return "?"
    f = inside[-1]
    name = f.filename
    cut = name.rfind("/fedai/")
    short = name[cut + 1 :] if cut >= 0 else Path(name).name
    return f"{short}:{f.lineno} in {f.name}"


def describe_error(err: BaseException) -> dict[str, Any]:
    """JSON-able description of an exception."""
    return {
        "error": type(err).__name__,
        "message": str(err)[:MESSAGE_CHARS],
        "where": where(err),
    }


class Runtime:
    """Decoders and fixtures of one worker, loaded once.

    Args:
        fixture_dir: A directory written by :func:`fuzz_fixtures.build_fixtures`.
    """

    def __init__(self, fixture_dir: Path) -> None:
        self.fixture_dir = fixture_dir
        self._check_takes_shapes = "shapes" in inspect.signature(CkksSum.check).parameters

    # Loaded on first use: a fresh worker for one holder trial skips the CKKS bundles.

    @cached_property
    def codec(self) -> CkksCodec:
        """The client decoder (holds the secret key)."""
        return CkksCodec(load_client_bundle(self.fixture_dir / "keys"))

    @cached_property
    def summer(self) -> CkksSum:
        """The coordinator (keyless)."""
        return CkksSum(load_coordinator_bundle(self.fixture_dir / "keys"))

    @property
    def coord_bundle(self) -> Any:
        """The coordinator's key bundle."""
        return self.summer._bundle

    @cached_property
    def envelopes(self) -> dict[str, Any]:
        """Mutation bases of the envelope targets."""
        return {t: load_envelope_fixture(self.fixture_dir, t) for t in ENVELOPE_TARGETS}

    @cached_property
    def expected(self) -> list[np.ndarray]:
        """The decoded average of the unmodified aggregate."""
        return load_expected_average(self.fixture_dir)

    @cached_property
    def holder_data(self) -> dict[str, np.ndarray]:
        """Layers, contexts and expected scores of the holder targets."""
        return load_holder_arrays(self.fixture_dir)

    @cached_property
    def holders(self) -> dict[str, Any]:
        """Mutation bases of the holder targets."""
        return {t: load_holder_fixture(self.fixture_dir, t) for t in HOLDER_TARGETS}

    @cached_property
    def holder(self) -> ModelHolder:
        """The model holder under test (one per worker, as in the service)."""
        data = self.holder_data
        return ModelHolder(
            [
                LinearLayer(weight=data["w0"], bias=data["b0"]),
                LinearLayer(weight=data["w1"], bias=data["b1"]),
            ],
            rng=np.random.default_rng(7),
        )

    @cached_property
    def querier(self) -> Querier:
        """The querier that made the batches (secret key), to open accepted replies."""
        querier = Querier()
        secret = self.holder_data["secret_context"].tobytes()
        querier._context = ts.context_from(secret, n_threads=1)
        return querier

    @property
    def expected0(self) -> np.ndarray:
        """Layer 0's plaintext scores of the encrypted rows."""
        return self.holder_data["expected0"]

    def run(self, target: str, m: Mutation, stage: Callable[[str], None]) -> dict[str, Any]:
        """Run one trial and classify its outcome (see the module docstring)."""
        if m.get("family") == "selftest":
            return _selftest(str(m["how"]))
        try:
            inp: EnvelopeInput | HolderInput
            if target in ENVELOPE_TARGETS:
                inp = apply_envelope(m, self.envelopes[target])
            else:
                inp = apply_holder(m, self.holders[target])
        except Exception as err:
            return {"outcome": "harness", **describe_error(err)}
        try:
            result = self._decode(target, inp)
        except FedAIError as err:
            blamed = getattr(err, "index", None)
            if isinstance(inp, EnvelopeInput) and target == "coordinator" and blamed is not None:
                mutated = 0 if inp.mutated_first else 1
                if blamed != mutated:
                    stage("blame")
                    problem = self._majority_blame(inp)
                    if problem:
                        return {
                            "outcome": "insane",
                            "stage": "blame",
                            "error": type(err).__name__,
                            "message": f"{problem} (the pair sum blamed payload {blamed}: "
                            f"{str(err)[:MESSAGE_CHARS]})",
                            "where": where(err),
                        }
            return {"outcome": "typed", **describe_error(err)}
        except Exception as err:
            return {"outcome": "untyped", **describe_error(err)}
        stage("sanity")
        try:
            problems, notes = self._sanity(target, inp, result)
        except Exception as err:
            return {"outcome": "insane", "stage": "sanity", **describe_error(err)}
        if problems:
            return {
                "outcome": "insane",
                "stage": "sanity",
                "error": "SanityError",
                "message": "; ".join(problems)[:MESSAGE_CHARS],
                "where": "sanity",
            }
        if m.get("auth") is False and notes.get("changed"):
            return {
                "outcome": "insane",
                "stage": "sanity",
                "error": "MacBypass",
                "message": "an unauthenticated mutation was accepted and changed the result",
                "where": "sanity",
            }
        return {"outcome": "ok", **notes}

    def _decode(self, target: str, inp: EnvelopeInput | HolderInput) -> Any:
        if isinstance(inp, EnvelopeInput):
            if target == "coordinator":
                if self._check_takes_shapes:  # as server/rounds.py calls it
                    self.summer.check(inp.payload, self.envelopes["coordinator"].shapes)
                else:
                    self.summer.check(inp.payload)
                other = self.envelopes["coordinator"].donors["other"]
                pair = [inp.payload, other] if inp.mutated_first else [other, inp.payload]
                return self.summer.sum(pair)
            return self.codec.decode(inp.payload, inp.total_weight, inp.shapes)
        batch = EncryptedBatch(
            layout=Layout(inp.layout),
            rows=inp.rows,
            features=inp.features,
            ciphertexts=inp.ciphertexts,
        )
        return self.holder.evaluate(inp.layer, inp.context, batch)

    def _majority_blame(self, inp: EnvelopeInput) -> str:
        """Whether a sum with two honest payloads blames ``m`` ("" if so, else the problem).

        With two payloads a layout disagreement is a tie the coordinator may break
        either way; with an honest majority it must blame the odd one out, first or last.
        """
        other = self.envelopes["coordinator"].donors["other"]
        for want, trio in ((0, [inp.payload, other, other]), (2, [other, other, inp.payload])):
            name = "[m, good, good]" if want == 0 else "[good, good, m]"
            try:
                self.summer.sum(trio)
            except FedAIError as err:
                blamed = getattr(err, "index", None)
                if blamed != want:
                    return f"sum({name}) blamed payload {blamed}, not the mutated {want}"
            except Exception as err:
                return f"sum({name}) raised {type(err).__name__}: {err}"
            else:
                return f"sum({name}) accepted what the pair sum refused"
        return ""

    def _sanity(
        self, target: str, inp: EnvelopeInput | HolderInput, result: Any
    ) -> tuple[list[str], dict[str, Any]]:
        if isinstance(inp, EnvelopeInput):
            if target == "coordinator":
                return self._sanity_sum(inp, result)
            return self._sanity_average(result, inp.shapes)
        return self._sanity_scores(inp, result)

    def _sanity_sum(self, inp: EnvelopeInput, agg: Any) -> tuple[list[str], dict[str, Any]]:
        """An accepted contribution must give an aggregate that re-opens and decodes safely."""
        bundle = self.coord_bundle
        env, _ = Envelope.from_payload(
            agg,
            scheme=Scheme.CKKS,
            fingerprint=bundle.fingerprint,
            mac_key=bundle._mac_key,
            slots=bundle.params.slots,
        )
        mine, _ = self.summer._open(inp.payload)
        problems = []
        if env.kind is not PayloadKind.AGGREGATE:
            problems.append(f"sum kind must be aggregate; got {env.kind}")
        if env.n_summands != 1 + mine.n_summands:
            problems.append(f"sum n_summands must be {1 + mine.n_summands}; got {env.n_summands}")
        shapes = [s.shape for s in env.specs]
        try:
            avg = self.codec.decode(agg, inp.total_weight, shapes)
        except FedAIError as err:
            return problems, {"note": f"client rejects the sum: {type(err).__name__}"}
        more, notes = self._sanity_average(avg, shapes)
        return problems + more, notes

    def _sanity_average(
        self, avg: Any, shapes: list[tuple[int, ...]]
    ) -> tuple[list[str], dict[str, Any]]:
        """An accepted aggregate decodes to finite arrays of the shapes, within the bound."""
        problems = []
        if not isinstance(avg, list) or len(avg) != len(shapes):
            return [f"decode must return {len(shapes)} arrays; got {type(avg).__name__}"], {}
        bound = self.codec.update_bound + 1e-6
        for i, (a, s) in enumerate(zip(avg, shapes, strict=True)):
            if not isinstance(a, np.ndarray) or a.shape != tuple(s) or a.dtype.kind != "f":
                problems.append(f"array {i} must be a float array of shape {s}; got {a!r:.60}")
            elif not np.all(np.isfinite(a)):
                problems.append(f"array {i} must be finite")
            elif a.size and float(np.max(np.abs(a))) > bound:
                problems.append(f"array {i} must be within the update bound; got {np.max(a):g}")
        changed = len(avg) != len(self.expected) or any(
            a.shape != e.shape or not np.allclose(a, e, atol=CHANGED_ATOL)
            for a, e in zip(avg, self.expected, strict=False)
        )
        return problems, {"changed": bool(changed)}

    def _sanity_scores(self, inp: HolderInput, scores: Any) -> tuple[list[str], dict[str, Any]]:
        """Accepted rows give a reply of the right count that the querier can open safely."""
        if not isinstance(scores, EncryptedScores):
            return [f"evaluate must return EncryptedScores; got {type(scores).__name__}"], {}
        layer = self.holder.layers[inp.layer]
        chunks = chunk_rows(
            Layout(inp.layout), inp.rows, layer.info.in_features, self.holder.profile
        )
        want = len(chunks) * layer.info.out_features
        if len(scores.ciphertexts) != want:
            return [f"reply must hold {want} ciphertexts; got {len(scores.ciphertexts)}"], {}
        try:
            y = self.querier.decrypt(scores)
        except FedAIError as err:
            return [], {"note": f"querier rejects the reply: {type(err).__name__}", "changed": True}
        changed = (
            inp.layer != 0
            or y.shape != self.expected0.shape
            or not np.allclose(y, self.expected0, atol=1e-3)
        )
        return [], {"changed": bool(changed)}


def _selftest(how: str) -> dict[str, Any]:
    """Misbehave on purpose, to test the supervisor (never used by a campaign)."""
    if how == "segfault":
        faulthandler.dump_traceback()
        os.kill(os.getpid(), signal.SIGSEGV)
    elif how == "abort":
        os.abort()
    elif how == "hang":
        time.sleep(3600)
    elif how == "exit":
        os._exit(3)
    try:
        raise RuntimeError(f"selftest {how}")
    except RuntimeError as err:
        return {"outcome": "untyped", **describe_error(err)}


def _limit_memory(limit: int) -> None:
    if limit > 0:
        _soft, hard = resource.getrlimit(resource.RLIMIT_AS)
        cap = limit if hard == resource.RLIM_INFINITY else min(limit, hard)
        resource.setrlimit(resource.RLIMIT_AS, (cap, hard))


def worker_main(conn: Connection, fixture_dir: str, fault_path: str, mem_limit: int) -> None:
    """Entry point of a worker process: ``("ready", pid)``, then one reply per trial.

    Args:
        conn: The worker's end of a duplex pipe. Receives ``(target, mutation)`` or None
            (stop); sends ``("ready", pid)``, ``("stage", name)`` and ``("result", dict)``.
        fixture_dir: The fixtures to load.
        fault_path: Where :mod:`faulthandler` writes the Python stack on a fatal signal.
        mem_limit: Address-space limit in bytes (0: none), so a runaway allocation fails
            inside the worker instead of exhausting the machine.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _limit_memory(mem_limit)
    with open(fault_path, "w") as fault_file:
        faulthandler.enable(file=fault_file)
        runtime = Runtime(Path(fixture_dir))
        conn.send(("ready", os.getpid()))
        while True:
            try:
                msg = conn.recv()
            except EOFError:
                break
            if msg is None:
                break
            target, mutation = msg
            reply = runtime.run(target, mutation, lambda s: conn.send(("stage", s)))
            conn.send(("result", reply))


__all__ = ["Runtime", "describe_error", "where", "worker_main"]

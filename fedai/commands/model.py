"""``fedai model decrypt``: a key holder turns a run's final aggregate into ``model.pt``.

Under CKKS or Paillier the coordinator never holds the plaintext model: it saves the
final aggregate as it holds it, encrypted, in ``RUN_DIR/final-aggregate.npz`` with what
decoding needs (total weight, spec, shapes, scheme settings, key fingerprint). A holder
of the key set's client bundle runs::

    fedai model decrypt RUN_DIR --keys KEY_DIR

and gets ``model.pt`` + ``model.json``, the same files ``fedai simulate`` writes for that
run (both call :func:`fedai.checkpoint.write_model`). The file is checked (format,
digest, fingerprint) and the envelope authenticated before any native decryption.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def register(sub: Any) -> None:
    """Add the ``model`` subcommand (``decrypt``)."""
    p: argparse.ArgumentParser = sub.add_parser(
        "model",
        help="work with a run's final model (decrypt it as a key holder)",
        description="Work with the final model a run saved.",
    )
    msub = p.add_subparsers(dest="model_command", metavar="ACTION")
    d: argparse.ArgumentParser = msub.add_parser(
        "decrypt",
        help="decrypt a run's final aggregate into model.pt + model.json",
        description="Decode RUN_DIR/final-aggregate.npz (saved by the coordinator, "
        "encrypted under CKKS or Paillier) with the client bundle in --keys and write "
        "model.pt + model.json (into RUN_DIR, or --out). A run in the clear needs no keys.",
        epilog="example:\n  fedai model decrypt runs/ckks-run --keys keys/ckks",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    d.add_argument("run_dir", metavar="RUN_DIR", help="the run's results directory")
    d.add_argument(
        "--keys", metavar="DIR", help="key directory holding the client bundle (client.bundle)"
    )
    d.add_argument("--out", metavar="DIR", help="where to write the model (default RUN_DIR)")
    d.set_defaults(func=run_decrypt)

    def _help(_args: argparse.Namespace) -> int:
        p.print_help()
        return 2

    p.set_defaults(func=_help)


def run_decrypt(args: argparse.Namespace) -> int:
    """Execute ``fedai model decrypt``."""
    from fedai.checkpoint import FinalAggregate, write_model
    from fedai.errors import ConfigError

    aggregate = FinalAggregate.load(args.run_dir)  # validated before any key is read
    if aggregate.scheme != "none" and not args.keys:
        raise ConfigError(
            f"--keys must name the key directory of the run's {aggregate.scheme} key set "
            f"(fingerprint {aggregate.key_fingerprint[:16]}); got none"
        )
    path = write_model(args.run_dir, key_dir=args.keys, out_dir=args.out, aggregate=aggregate)
    print(
        f"run {aggregate.run_id} (round {aggregate.round}, {aggregate.scheme}): model "
        f"written to {path} and {Path(path).with_name('model.json')}"
    )
    return 0


__all__ = ["register", "run_decrypt"]

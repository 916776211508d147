"""``fedai keys``: create and inspect secure-aggregation key bundles.

``fedai keys create --scheme ckks --out DIR`` writes ``DIR/client.bundle`` (secret key,
mode 0600) and ``DIR/coordinator.bundle`` (no key), creating DIR with mode 0700 if it is
missing; ``fedai keys show DIR`` prints the fingerprint, the parameters and which bundles
are present -- never key material.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

from fedai.crypto.keys import (
    CLIENT_BUNDLE,
    COORDINATOR_BUNDLE,
    MAX_TOTAL_BITS_128,
    BundleInfo,
    create_keys,
    read_bundle_info,
)
from fedai.errors import ConfigError, KeyFileError


def _bit_sizes(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError as err:
        raise argparse.ArgumentTypeError(
            f"must be comma-separated integers like 60,40,40,60; got {text!r}"
        ) from err


def _cmd_create(args: argparse.Namespace) -> int:
    if args.scale_bits < 1:
        raise ConfigError(f"--scale-bits must be >= 1; got {args.scale_bits}")
    bundle = create_keys(
        args.out,
        scheme=args.scheme,
        poly_modulus_degree=args.poly_modulus_degree,
        coeff_mod_bit_sizes=args.coeff_mod_bit_sizes,
        global_scale=2.0**args.scale_bits,
        encryption=args.encryption,
        force=args.force,
        overwrite=args.overwrite,
    )
    out = Path(args.out)
    print(
        f"created {bundle.params.poly_modulus_degree}-degree CKKS key set "
        f"{bundle.fingerprint.hex()} ({bundle.encryption} encryption)"
    )
    print(f"  {out / CLIENT_BUNDLE}  (secret key, mode 0600: give to every client)")
    print(f"  {out / COORDINATOR_BUNDLE}  (no key: give to the coordinator)")
    return 0


def _describe(info: BundleInfo) -> dict[str, Any]:
    p = info.params
    return {
        "path": str(info.path),
        "kind": info.kind,
        "bytes": info.size_bytes,
        "mode": f"{info.mode:04o}",
        "fingerprint": info.fingerprint,
        "created": info.created,
        "scheme": info.scheme,
        "encryption": info.extra.get("encryption", "public-key"),
        "poly_modulus_degree": p.poly_modulus_degree,
        "coeff_mod_bit_sizes": list(p.coeff_mod_bit_sizes),
        "total_bits": p.total_bits,
        "max_total_bits_128": MAX_TOTAL_BITS_128.get(p.poly_modulus_degree),
        "scale_bits": math.log2(p.global_scale),
        "slots": p.slots,
        "secure_128": not p.security_problems(),
        "forced": info.forced,
    }


def _cmd_show(args: argparse.Namespace) -> int:
    key_dir = Path(args.dir)
    if not key_dir.is_dir():
        raise KeyFileError(
            f"{key_dir}: expected a key directory; got "
            f"{'a file' if key_dir.exists() else 'nothing'}"
        )
    found = [key_dir / n for n in (CLIENT_BUNDLE, COORDINATOR_BUNDLE) if (key_dir / n).exists()]
    if not found:
        raise KeyFileError(
            f"{key_dir}: expected {CLIENT_BUNDLE} and/or {COORDINATOR_BUNDLE}; got neither"
        )
    rows = [_describe(read_bundle_info(p)) for p in found]
    fingerprints = {r["fingerprint"] for r in rows}
    if len(fingerprints) > 1:
        raise KeyFileError(
            f"{key_dir}: expected both bundles to share one fingerprint; got "
            f"{sorted(f[:16] for f in fingerprints)}"
        )
    if args.json:
        print(json.dumps({"dir": str(key_dir), "bundles": rows}, indent=2))
        return 0
    first = rows[0]
    print(f"key set     {first['fingerprint']}")
    print(
        f"scheme      {first['scheme']} ({first['encryption']})  "
        f"N={first['poly_modulus_degree']}  "
        f"bits={first['coeff_mod_bit_sizes']} (total {first['total_bits']}, "
        f"<= {first['max_total_bits_128']} for 128-bit)  scale=2^{first['scale_bits']:g}  "
        f"slots={first['slots']}"
    )
    print(f"security    {'128-bit profile' if first['secure_128'] else 'BELOW 128-bit (forced)'}")
    for r in rows:
        print(
            f"{r['kind']:<12}{r['path']}  {r['bytes']} bytes  mode {r['mode']}  "
            f"created {r['created']}"
        )
    return 0


def register(subparsers: Any) -> None:
    """Add ``fedai keys create`` and ``fedai keys show`` to the top-level parser."""
    keys = subparsers.add_parser(
        "keys", help="create / inspect secure-aggregation key bundles", description=__doc__
    )
    keys.set_defaults(func=lambda _args: (keys.print_help(), 2)[1])
    sub = keys.add_subparsers(dest="keys_command", metavar="ACTION")

    create = sub.add_parser("create", help="generate a key set (client + coordinator bundles)")
    create.add_argument(
        "--scheme", choices=["ckks"], default="ckks", help="encryption scheme (default: ckks)"
    )
    create.add_argument("--out", required=True, metavar="DIR", help="key directory to write")
    create.add_argument(
        "--poly-modulus-degree",
        type=int,
        default=8192,
        metavar="N",
        help="CKKS ring degree (default: 8192, 4096 slots)",
    )
    create.add_argument(
        "--coeff-mod-bit-sizes",
        type=_bit_sizes,
        default=(60, 50, 60),
        metavar="BITS",
        help="comma-separated prime sizes, last = special "
        "prime (default: 60,50,60: no multiplication is ever needed, so two data primes are "
        "enough; 60,40 with --scale-bits 30 cuts the wire size 2x more)",
    )
    create.add_argument(
        "--scale-bits", type=int, default=40, help="log2 of the CKKS scale (default: 40)"
    )
    create.add_argument(
        "--encryption",
        choices=["symmetric", "public-key"],
        default="symmetric",
        help="symmetric (default): no public key is made; 2x faster, 10x less noise. "
        "public-key: textbook CKKS",
    )
    create.add_argument(
        "--force",
        action="store_true",
        help="accept parameters below the 128-bit profile (N < 8192)",
    )
    create.add_argument(
        "--overwrite", action="store_true", help="replace an existing key set in DIR"
    )
    create.set_defaults(func=_cmd_create)

    show = sub.add_parser("show", help="print a key set's fingerprint, parameters, bundles")
    show.add_argument("dir", metavar="DIR", help="key directory")
    show.add_argument("--json", action="store_true", help="print JSON")
    show.set_defaults(func=_cmd_show)


__all__ = ["register"]

"""``fedai keys``: create and inspect secure-aggregation key bundles.

``fedai keys create --scheme SCHEME --out DIR`` writes ``DIR/client.bundle`` (secret key,
mode 0600) and ``DIR/coordinator.bundle`` (public material only), creating DIR with mode
0700 if it is missing; ``fedai keys show DIR`` prints the fingerprint, the parameters and
which bundles are present -- never key material. The schemes, and each scheme's own
options, come from the registry (:mod:`fedai.schemes`).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from fedai import progress
from fedai.crypto.bundle import (
    CLIENT_BUNDLE,
    COORDINATOR_BUNDLE,
    BundleInfo,
    read_bundle_info,
)
from fedai.errors import EXIT_OK, EXIT_USAGE, ConfigError, KeyFileError
from fedai.schemes import get_scheme, key_scheme, key_scheme_names, scheme_names


def _cmd_create(args: argparse.Namespace) -> int:
    spec = key_scheme(args.scheme)
    params: dict[str, Any] = {}
    for name in key_scheme_names():
        for option in get_scheme(name).key_options:
            value = getattr(args, _dest(name, option.kwarg), None)
            if value is None:
                continue
            if name != spec.name:
                raise ConfigError(
                    f"{option.flag} applies to --scheme {name}; got --scheme {spec.name}"
                )
            params[option.kwarg] = option.convert(value) if option.convert else value
    assert spec.create_keys is not None  # key_scheme() returns schemes with keys only
    with progress.when_slow(f"creating a {spec.name} key set in {args.out}..."):
        bundle = spec.create_keys(args.out, force=args.force, overwrite=args.overwrite, **params)
    out = Path(args.out)
    row = _describe(read_bundle_info(out / CLIENT_BUNDLE))
    print(f"created {spec.name} key set {bundle.fingerprint.hex()}  {row['summary']}")
    print(f"  {out / CLIENT_BUNDLE}  (secret key, mode 0600: give to every client)")
    print(f"  {out / COORDINATOR_BUNDLE}  (public material only: give to the coordinator)")
    return EXIT_OK


def _dest(scheme: str, kwarg: str) -> str:
    return f"{scheme}_option_{kwarg}"


def _describe(info: BundleInfo) -> dict[str, Any]:
    if info.scheme not in scheme_names():
        raise KeyFileError(
            f"{info.path}: expected a scheme in {', '.join(key_scheme_names())}; "
            f"got {info.scheme!r}"
        )
    spec = get_scheme(info.scheme)
    row: dict[str, Any] = {
        "path": str(info.path),
        "kind": info.kind,
        "bytes": info.size_bytes,
        "mode": f"{info.mode:04o}",
        "fingerprint": info.fingerprint,
        "created": info.created,
        "scheme": info.scheme,
        "forced": info.forced,
    }
    if spec.describe_keys is not None:
        row.update(spec.describe_keys(info))
    return row


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
        return EXIT_OK
    first = rows[0]
    print(f"key set     {first['fingerprint']}")
    print(f"scheme      {first['scheme']} {first.get('summary', '')}".rstrip())
    if "security" in first:
        print(f"security    {first['security']}")
    for r in rows:
        print(
            f"{r['kind']:<12}{r['path']}  {r['bytes']} bytes  mode {r['mode']}  "
            f"created {r['created']}"
        )
    return EXIT_OK


def register(subparsers: Any) -> None:
    """Add ``fedai keys create`` and ``fedai keys show`` to the top-level parser."""
    keys = subparsers.add_parser(
        "keys", help="create / inspect secure-aggregation key bundles", description=__doc__
    )
    keys.set_defaults(func=lambda _args: (keys.print_help(), EXIT_USAGE)[1])
    sub = keys.add_subparsers(dest="keys_command", metavar="ACTION")

    names = key_scheme_names()
    create = sub.add_parser("create", help="generate a key set (client + coordinator bundles)")
    create.add_argument(
        "--scheme",
        choices=names,
        default=names[0],
        help="encryption scheme: "
        + "; ".join(f"{n}: {get_scheme(n).summary}" for n in names)
        + f" (default: {names[0]})",
    )
    create.add_argument("--out", required=True, metavar="DIR", help="key directory to write")
    for name in names:
        group = create.add_argument_group(f"{name} options")
        for option in get_scheme(name).key_options:
            group.add_argument(
                option.flag,
                dest=_dest(name, option.kwarg),
                type=option.type,
                choices=option.choices,
                metavar=option.metavar,
                default=None,
                help=option.help,
            )
    create.add_argument(
        "--force",
        action="store_true",
        help="accept parameters below fedai's security floor (each scheme keeps hard "
        "limits it refuses even when forced)",
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

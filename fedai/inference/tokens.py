"""Bearer tokens for the inference service, read from a file only its owner can access.

The tokens file holds one ``<token-id> <token>`` pair per line (``#`` comments). It is refused
if group or others may read or write it; tokens are compared as SHA-256 digests in constant
time.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import stat
from pathlib import Path

from fedai.errors import ConfigError

MIN_TOKEN_LENGTH = 16

TOKENS_FILE_FORBIDDEN_BITS = 0o066
"""A tokens file readable or writable by group or others is refused."""


class TokenStore:
    """Bearer tokens by id; lookup compares SHA-256 digests with :func:`hmac.compare_digest`.

    Args:
        tokens: mapping token id -> token.
    """

    def __init__(self, tokens: dict[str, str]) -> None:
        problems = [
            f"token {tid!r} must be >= {MIN_TOKEN_LENGTH} characters; got {len(tok)}"
            for tid, tok in tokens.items()
            if len(tok) < MIN_TOKEN_LENGTH
        ]
        if not tokens:
            problems.append("tokens file must define at least one token; got none")
        if problems:
            raise ConfigError(problems)
        self._digests = [(tid, _digest(tok)) for tid, tok in tokens.items()]

    @classmethod
    def from_file(cls, path: str | Path) -> TokenStore:
        """Read ``<token-id> <token>`` lines from a file only its owner can read and write.

        Raises:
            ConfigError: unreadable file, a mode giving group or others read or write
                access, malformed line, duplicate id, short token.
        """
        p = Path(path)
        try:
            with p.open(encoding="utf-8") as fh:
                mode = stat.S_IMODE(os.fstat(fh.fileno()).st_mode)
                if mode & TOKENS_FILE_FORBIDDEN_BITS:
                    raise ConfigError(
                        f"tokens file {str(p)!r} must not be readable or writable by group "
                        f"or others (chmod 600); got {mode:04o}"
                    )
                text = fh.read()
        except (OSError, UnicodeDecodeError) as err:
            raise ConfigError(f"tokens file {str(p)!r} must be readable: {err}") from err
        tokens: dict[str, str] = {}
        problems = []
        for number, line in enumerate(text.splitlines(), start=1):
            stripped = line.strip()
            if not stripped or stripped.startswith("#"):
                continue
            fields = stripped.split()
            if len(fields) != 2:
                problems.append(
                    f"{p}:{number} must be '<token-id> <token>'; got {len(fields)} fields"
                )
            elif fields[0] in tokens:
                problems.append(f"{p}:{number} token id {fields[0]!r} must be unique")
            else:
                tokens[fields[0]] = fields[1]
        if problems:
            raise ConfigError(problems)
        return cls(tokens)

    def identify(self, token: str) -> str | None:
        """Return the id of ``token``, or None; every entry is compared (no early exit)."""
        digest = _digest(token)
        found = None
        for tid, ref in self._digests:
            if hmac.compare_digest(digest, ref):
                found = tid
        return found


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8")).digest()


__all__ = ["MIN_TOKEN_LENGTH", "TOKENS_FILE_FORBIDDEN_BITS", "TokenStore"]

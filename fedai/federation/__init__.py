"""Flower glue shared by server/ and clients/: message keys, record codecs, runners.

The only fedai subpackage that imports ``flwr``. Everything Flower-version-specific that
is not public API lives in :mod:`fedai.federation.flower_internals`.
"""

"""The fedai error tree.

Every boundary that reads untrusted input (configs, data files, key files, ciphertexts,
network requests) raises one of these. Messages follow the pattern *name, expectation,
value*: ``"data.alpha must be > 0; got -1.0"``. Only the glue (CLI, ServerApp, ClientApp,
gRPC service) translates them into exit codes or error replies.
"""

from __future__ import annotations

# Exit statuses of every fedai command (the one place they are defined; `fedai --help`
# lists them).
EXIT_OK = 0  # the command did what was asked
EXIT_FAILED = 1  # it ran but failed: no accepted round, the last rounds all failed, or it
#                  stopped for a reason other than finishing (results.json says why)
EXIT_USAGE = 2  # bad input found before anything ran: config, data, keys, paths, ports
EXIT_INTERRUPTED = 130  # Ctrl-C


class FedAIError(Exception):
    """Base class of every error fedai raises on purpose."""


class ConfigError(FedAIError, ValueError):
    """An experiment configuration is invalid (unknown key, wrong type, out of range)."""

    def __init__(self, problems: list[str] | str) -> None:
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("; ".join(self.problems))


class DataError(FedAIError, ValueError):
    """A data source or data file cannot be used (missing, unreadable, malformed)."""


class PartitionError(DataError):
    """A partitioning would leave a client without samples or is otherwise impossible."""


class ModelError(FedAIError, ValueError):
    """Unknown model name, or a model that cannot be built for the given data shape."""


class InvalidPrivacyParameterError(FedAIError, ValueError):
    """A privacy parameter lies outside its mathematical domain (e.g. delta not in (0, 1))."""


class PrivacyBudgetExceededError(FedAIError):
    """Training one more round would push a client's epsilon past its budget."""


class PolicyViolationError(FedAIError):
    """The coordinator asked a node for more than the node's own policy allows."""


class LedgerError(FedAIError):
    """A stored privacy ledger / accountant history is unreadable or inconsistent."""


class RoundAlreadyChargedError(LedgerError):
    """A client's ledger already holds a charge for this (run id, round).

    A coordinator that resumed from a checkpoint re-sends a round the client already paid
    for; the client refuses rather than pay for a second noisy release.
    """

    def __init__(self, message: str, *, run_id: str, round: int) -> None:
        super().__init__(message)
        self.run_id = run_id
        self.round = round


class LedgerContinuityError(LedgerError):
    """A client's ledger holds less than the run already saw of it (lost or replaced).

    Raised by a node whose ledger is missing, or older than the coordinator's checkpointed
    view of it or than the node's own high-water mark, instead of training from zero; and
    by the coordinator when a client's privacy report falls below what it reported before.
    ``client_id`` names the client.
    """

    def __init__(self, message: str, *, client_id: str) -> None:
        super().__init__(message)
        self.client_id = client_id


class CheckpointError(FedAIError, ValueError):
    """A coordinator checkpoint or saved aggregate is unreadable, foreign or of another config."""


class KeyFileError(FedAIError, ValueError):
    """A key bundle file is missing, unreadable, malformed or of the wrong kind."""


class KeyMismatchError(FedAIError):
    """An encrypted payload was produced under a different key (fingerprint mismatch)."""


class CorruptPayloadError(FedAIError, ValueError):
    """An encrypted payload is malformed, truncated, or decrypts outside its bounds."""


class LayoutMismatchError(CorruptPayloadError):
    """A payload's array shapes or dtypes differ from the layout the receiver declared.

    E.g. an aggregate relabelled from float32 to float16 (its values lose precision), or a
    contribution re-tagged with float64 item sizes.
    """


class ContributionError(CorruptPayloadError):
    """One of several payloads given to a sum is bad; ``index`` says which.

    The coordinator drops that contribution (that client, that round) and sums the rest.
    """

    def __init__(self, message: str, *, index: int) -> None:
        super().__init__(message)
        self.index = index


class InsecureParametersError(FedAIError, ValueError):
    """Cryptographic parameters below the required security level."""


class ProtocolError(FedAIError):
    """A federated protocol message is missing, out of order or inconsistent."""


class InferenceError(FedAIError, ValueError):
    """An encrypted-inference request cannot be served (bad shape, bad context, ...)."""


__all__ = [
    "CheckpointError",
    "ConfigError",
    "ContributionError",
    "CorruptPayloadError",
    "DataError",
    "FedAIError",
    "InferenceError",
    "InsecureParametersError",
    "InvalidPrivacyParameterError",
    "KeyFileError",
    "KeyMismatchError",
    "LayoutMismatchError",
    "LedgerContinuityError",
    "LedgerError",
    "ModelError",
    "PartitionError",
    "PolicyViolationError",
    "PrivacyBudgetExceededError",
    "ProtocolError",
    "RoundAlreadyChargedError",
]

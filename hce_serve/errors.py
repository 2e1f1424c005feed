"""One small exception hierarchy for every HCE package.

Library code raises these; only ``cli.py`` modules turn them into exit codes. Messages say what was
expected and what was found, and name the file (and line) when there is one.
"""

from __future__ import annotations


class HCEError(Exception):
    """Base class: an error the user can fix (bad data, bad artifact, bad config)."""


class DataError(HCEError):
    """Input data (BEIR corpus/queries/qrels, TREC run, request body) is malformed."""


class FormatError(HCEError):
    """An on-disk artifact (card, tree, manifest, index files) is missing, corrupt or inconsistent."""


class VersionError(FormatError):
    """An artifact was written by a newer format version than this code can read."""


class ConfigError(HCEError):
    """A configuration value is out of range or inconsistent with another one."""


class MissingDependencyError(HCEError):
    """An optional dependency is not installed; the message carries the pip command."""


class ValidationError(HCEError):
    """An exported model is out of tolerance against its reference."""


class BackendError(HCEError):
    """A distributed backend (a Milvus server, a Ray cluster) could not be reached or refused a request."""


def missing_dependency(module: str, extra: str) -> MissingDependencyError:
    """Build the error for an optional import that failed."""
    return MissingDependencyError(
        f"{module} is not installed; install it with: pip install 'hce[{extra}]'"
    )

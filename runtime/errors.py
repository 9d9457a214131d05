"""Error types of the runtime."""

from __future__ import annotations


class BitstreamError(ValueError):
    """A bitstream is malformed, corrupt, truncated, or does not belong to the decoding model."""

"""The Django side: base consumers, routing helpers and test helpers for gateway messages."""

from consumers.failures import PermanentFailure

__all__ = ["PermanentFailure"]

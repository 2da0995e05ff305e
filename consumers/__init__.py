"""The Django side: base consumers, routing helpers and test helpers for gateway messages."""

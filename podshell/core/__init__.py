"""Shared value types and contracts: what every layer above speaks."""

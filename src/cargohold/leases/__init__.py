"""Leases: hold objects alive while an operation builds them."""

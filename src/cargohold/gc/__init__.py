"""Garbage collection: pure tri-colour marking and the sweeping collector."""

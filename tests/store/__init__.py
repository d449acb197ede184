"""Tests of the blob store (a package, so module names do not clash with other test dirs)."""

"""cargohold: a content-addressable store and snapshot engine for container images."""

__version__ = "0.1.0"

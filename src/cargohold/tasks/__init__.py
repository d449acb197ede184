"""The task layer: containers, OCI runtime specs, the per-task shim and ``runc``."""

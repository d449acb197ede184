"""``hold serve``: the storage service, the same library as the embedded CLI, long-lived.

The duties and the APIs that expose them are kept apart, so a second API (containerd's gRPC)
can sit beside the first without touching the duties::

    settings.py     [gc] and [serve] of config.toml and the hosts directory, validated
    core.py         Service: the duties, their state and counters, reload, start and stop
    gcsched.py        the GC scheduler (containerd's thresholds), in a thread
    expiry.py         when the next lease or ingest expires, and leases of dead owners
    mountsweep.py     mount records whose target is no longer mounted
    notify.py       systemd's notify protocol (READY, RELOADING, STOPPING)
    metrics.py      counters, and their Prometheus text
    control.py      API: the JSON status/reload API on <state>/hold.sock
    registry/       API: an OCI distribution registry over one namespace of the store

An API reads the service's state and calls its methods; a duty never imports an API.
"""

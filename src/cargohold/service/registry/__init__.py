"""The registry API: an OCI distribution registry over one namespace of the store.

::

    catalog.py   names, tags and digests of a request → images of the store (and ``?ns=``)
    handler.py   HTTP: routes, manifests and blobs (``os.sendfile``, Range), errors
    uploads.py   push: blob upload sessions, manifest puts, basic auth from htpasswd
    server.py    the listener (threads, timeouts, limits, graceful stop): RegistryAPI

Read-only unless ``[serve] registry_push = true``; what it serves is what the namespace
records, and nothing outside the store's blobs is ever read for a response.
"""

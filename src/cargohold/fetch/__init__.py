"""Registry fetch: resolve, pull, push, auth and containerd's ``hosts.toml`` mirrors.

Modules, bottom up: :mod:`.api` (errors and the endpoint record), :mod:`.hosts` (which
endpoints a reference tries, from ``hosts.toml``), :mod:`.credentials` and :mod:`.auth`
(who we are, and the ``WWW-Authenticate`` dance), :mod:`.transport` (one HTTP session per
endpoint, retries, errors that name the endpoint), :mod:`.remote` (the OCI distribution API
of one repository), :mod:`.download` (resumable blob downloads that unpack can read while
they run), :mod:`.pull` and :mod:`.push`; above them the air-gap tools: :mod:`.bundle`
(one archive of images), :mod:`.seed` (bundles, archives and k3s-style directories, once) and
:mod:`.mirrors` (one private registry for every upstream, and its hosts.toml).
"""

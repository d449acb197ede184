"""What `hold serve` reads from config.toml: every [gc] knob, the registry's address and push
rules; and the duties kept apart from the APIs that expose them."""

from __future__ import annotations

import ast
import os

import pytest

from cargohold import config as config_mod
from cargohold.errors import InvalidArgument
from cargohold.service import settings
from tests.fetch.registry import htpasswd

SERVICE = os.path.join(os.path.dirname(__file__), "..", "..", "src", "cargohold", "service")


def _load(tmp_path, text: str) -> settings.Settings:
    path = tmp_path / "config.toml"
    path.write_text(text)
    return settings.load(config_mod.load(str(path), root=str(tmp_path / "root"),
                                         state=str(tmp_path / "state")))


def test_every_gc_knob_is_read(tmp_path):
    st = _load(tmp_path, '[gc]\npause_threshold = 0.1\ndeletion_threshold = 3\n'
                         'mutation_threshold = 50\nschedule_delay = "250ms"\n'
                         'startup_delay = "2s"\n')
    assert st.gc == settings.GCSettings(0.1, 3, 50, 0.25, 2.0)
    assert _load(tmp_path, "").gc == settings.GCSettings(), "containerd's defaults"


@pytest.mark.parametrize("text,words", [
    ("[gc]\npause_threshold = 0.6\n", "pause_threshold"),
    ("[gc]\ndeletion_threshold = -1\n", "deletion_threshold"),
    ('[gc]\nschedule_delay = "soon"\n', "schedule_delay"),
    ('[gc]\nstartup_delay = 5\n', "startup_delay"),
    ('[serve]\nregistry_address = "example.com:5000"\n', "not an IP address"),
    ('[serve]\nregistry_address = "127.0.0.1"\n', "not HOST:PORT"),
    ('[serve]\nclient_timeout = "0s"\n', "client_timeout"),
    ('[serve]\nmax_upload_size = "0"\n', "max_upload_size"),
    ("[serve]\nregistry_push = true\n", "needs htpasswd"),
])
def test_bad_values_are_refused_naming_the_key(tmp_path, text, words):
    with pytest.raises(InvalidArgument) as ei:
        _load(tmp_path, text)
    assert words in ei.value.message


def test_registry_is_loopback_unless_configured(tmp_path):
    st = _load(tmp_path, "")
    assert (st.registry.host, st.registry.port) == ("127.0.0.1", 5000)
    assert not st.registry.push
    st = _load(tmp_path, '[serve]\nregistry_address = "0.0.0.0:5001"\n')
    assert (st.registry.host, st.registry.port) == ("0.0.0.0", 5001)
    assert not _load(tmp_path, '[serve]\nregistry_address = ""\n').registry.enabled


def test_push_takes_bcrypt_htpasswd_only(tmp_path):
    good = htpasswd(str(tmp_path / "good"), "alice", "s3cret")
    st = _load(tmp_path, f'[serve]\nregistry_push = true\nhtpasswd = "{good}"\n')
    assert st.registry.push and set(st.registry.users) == {"alice"}
    for name, line in (("md5", "bob:$apr1$abc$def"), ("sha", "bob:{SHA}abc="),
                       ("plain", "bob:secret")):
        path = tmp_path / name
        path.write_text(line + "\n")
        with pytest.raises(InvalidArgument) as ei:
            _load(tmp_path, f'[serve]\nregistry_push = true\nhtpasswd = "{path}"\n')
        assert "no bcrypt hash" in ei.value.message
    with pytest.raises(InvalidArgument):
        _load(tmp_path, f'[serve]\nregistry_push = true\nhtpasswd = "{tmp_path}/none"\n')


def _imports(path: str) -> set[str]:
    with open(path) as f:
        tree = ast.parse(f.read())
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            out.add(node.module)
            out.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
    return out


def test_duties_never_import_an_api():
    """A second API (containerd's gRPC) sits beside the registry and the control socket
    without touching the duties: no duty module imports an API, even lazily.
    """
    duties = [n for n in os.listdir(SERVICE) if n.endswith(".py") and n != "control.py"]
    assert {"core.py", "gcsched.py", "expiry.py", "mountsweep.py"} <= set(duties)
    for name in duties:
        bad = {m for m in _imports(os.path.join(SERVICE, name))
               if m.startswith(("cargohold.service.registry", "cargohold.service.control"))}
        assert not bad, f"{name} imports {bad}"

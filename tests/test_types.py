"""Digests and identifiers are exactly their grammar: no trailing newline slips through."""

from __future__ import annotations

import pytest

from cargohold.errors import InvalidArgument, MalformedData
from cargohold.images import refs
from cargohold.types import Descriptor, Digest, is_digest, validate_identifier

HEX = "ab" * 32


@pytest.mark.parametrize("text", [f"sha256:{HEX}\n", f"sha256:{HEX}\r\n", f" sha256:{HEX}",
                                  f"sha256:{HEX} ", f"sha256:{HEX}\0", f"sha256:{HEX.upper()}",
                                  f"sha256:{HEX[:-1]}", f"sha512:{HEX}", f"md5:{HEX}", ""])
def test_a_digest_is_exactly_algorithm_colon_hex(text):
    with pytest.raises(InvalidArgument, match="not a valid digest"):
        Digest(text)
    assert not is_digest(text)


def test_well_formed_digests_pass():
    assert Digest(f"sha256:{HEX}") == f"sha256:{HEX}"
    assert is_digest(f"sha512:{HEX * 2}")
    assert not is_digest(None)  # type: ignore[arg-type]


@pytest.mark.parametrize("text", ["ns\n", "ns\r\n", "a..b", "-a", ""])
def test_identifiers_are_exact(text):
    with pytest.raises(InvalidArgument):
        validate_identifier("namespace", text)


@pytest.mark.parametrize("ref", ["alpine:3\n1", "alpine:ü", "alpine@sha256:" + HEX + "\n1"])
def test_references_are_exact(ref):
    with pytest.raises(InvalidArgument):
        refs.normalize(ref)
    assert not refs.is_tag("3\n")


@pytest.mark.parametrize("doc", [{"digest": f"sha256:{HEX}\n", "size": 1},
                                 {"digest": f"sha256:{HEX}", "size": -1},
                                 {"digest": f"sha256:{HEX}", "size": "12"},
                                 {"digest": f"sha256:{HEX}", "size": True},
                                 {"digest": f"sha256:{HEX}", "size": 1, "platform": "linux"},
                                 {"size": 1}, ["not", "a", "dict"]])
def test_a_malformed_descriptor_is_malformed_data_not_a_usage_error(doc):
    with pytest.raises(MalformedData, match="malformed") as ei:
        Descriptor.from_json(doc)  # type: ignore[arg-type]
    assert ei.value.exit_code == 1

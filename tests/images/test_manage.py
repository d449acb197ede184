"""`hold images ls|check|tag|rm|label|inspect` as a user runs them."""

from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.peer


@pytest.fixture
def two(hold, archives):
    """The full image (x:1.0) and the docker-saved one (example.com/team/busy:1)."""
    hold("images", "import", "--progress", "none", archives["oci"], "--base-name", "x")
    hold("images", "import", "--progress", "none", "--no-unpack", archives["docker"])
    return archives


def test_ls_table_quiet_json_and_filters(hold, two):
    out = hold("images", "ls").stdout.decode().splitlines()
    assert out[0].split() == ["NAME", "TYPE", "DIGEST", "SIZE", "PLATFORMS", "LABELS"]
    row = next(r for r in out if r.startswith("x:1.0"))
    assert two["manifest"] in row and "linux/amd64" in row
    assert hold("images", "ls", "-q").stdout.decode().split() == [
        "example.com/team/busy:1", "x:1.0"]
    rows = json.loads(hold("images", "ls", "--format", "json").stdout)
    byname = {r["name"]: r for r in rows}
    assert byname["x:1.0"]["digest"] == two["manifest"]
    assert byname["x:1.0"]["platforms"] == ["linux/amd64"] and byname["x:1.0"]["size"] > 1e6
    assert byname["example.com/team/busy:1"]["type"].startswith("application/vnd.docker")
    assert hold("images", "ls", "-q", "name==x:1.0").stdout.decode().split() == ["x:1.0"]


def test_check_reports_completeness_and_unpacking(hold, two):
    out = hold("images", "check").stdout.decode().splitlines()
    assert out[0].split() == ["NAME", "PLATFORM", "STATUS", "UNPACKED", "MANIFEST"]
    rows = {r.split()[0]: r.split() for r in out[1:]}
    assert rows["x:1.0"][1:4] == ["linux/amd64", "complete", "yes"]
    # Imported with --no-unpack, but its layers are x:1.0's: the same chain is unpacked.
    assert rows["example.com/team/busy:1"][1:4] == ["linux/amd64", "complete", "yes"]


def test_check_counts_missing_blobs(hold, two):
    man = json.loads(hold("content", "get", two["manifest"]).stdout)
    hold("content", "rm", man["layers"][2]["digest"], man["layers"][1]["digest"])
    [img] = json.loads(hold("images", "check", "--format", "json", "name==x:1.0").stdout)
    assert not img["complete"] and img["platforms"][0]["status"] == "2 blobs missing"


def test_tag_label_inspect_rm(hold, two):
    assert hold("images", "tag", "x:1.0", "y:1", "z:1").stdout.decode().split() == ["y:1", "z:1"]
    p = hold("images", "tag", "example.com/team/busy:1", "y:1", check=False)
    assert p.returncode == 1 and b"already exists" in p.stderr and b"--force" in p.stderr
    hold("images", "tag", "--force", "example.com/team/busy:1", "y:1")
    assert hold("images", "label", "z:1", "team=a", "tier=1").stdout.strip() == b"team=a,tier=1"
    hold("images", "label", "z:1", "tier=")
    doc = json.loads(hold("images", "inspect", "z:1").stdout)
    assert doc["labels"] == {"team": "a"} and doc["target"]["digest"] == two["manifest"]
    [m] = doc["manifests"]
    assert m["unpacked"] is True and len(m["chain_ids"]) == 3 and m["chain_id"] == m[
        "chain_ids"][-1]
    assert m["config"]["rootfs"]["diff_ids"] == m["diff_ids"]
    assert doc["platforms"] == ["linux/amd64"]
    p = hold("images", "rm", "nope", "z:1", check=False)
    assert p.returncode == 1 and b"image nope: not found" in p.stderr
    assert "z:1" in hold("images", "ls", "-q").stdout.decode().split()  # all or nothing
    assert hold("images", "rm", "z:1", "y:1").stdout.decode().split() == ["z:1", "y:1"]
    assert hold("images", "ls", "-q").stdout.decode().split() == [
        "example.com/team/busy:1", "x:1.0"]


def test_inspect_multi_platform_index(hold, archives):
    hold("images", "import", "--progress", "none", archives["multi_tar"])
    doc = json.loads(hold("images", "inspect", "example.com/multi:1").stdout)
    assert doc["index"]["mediaType"] == "application/vnd.oci.image.index.v1+json"
    states = {(m["platform"], m["attestation"]): m for m in doc["manifests"]}
    m = archives["multi"]
    assert states[(m["host"], False)]["unpacked"] is True
    assert states[(m["other"], False)]["status"] == "manifest missing"
    assert states[("unknown/unknown", True)]["attests"] == m["present"]
    assert states[(m["partial"], False)]["missing"] and doc["platforms"] == [
        m["host"], m["other"], m["partial"]]

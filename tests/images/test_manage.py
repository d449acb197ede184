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
    assert out[0].split() == ["REF", "TYPE", "DIGEST", "SIZE", "PLATFORMS", "LABELS"]
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
    assert out[0].split() == ["REF", "TYPE", "DIGEST", "STATUS", "SIZE", "UNPACKED"]
    rows = {r.split()[0]: r.split() for r in out[1:]}
    # config + 3 layers, as ctr counts them; a plain manifest has no per-platform rows.
    assert len(out) == 3
    assert rows["x:1.0"][2:5] == [two["manifest"], "complete", "(4/4)"]
    assert rows["x:1.0"][-1] == "true"
    # Imported with --no-unpack, but its layers are x:1.0's: the same chain is unpacked.
    assert rows["example.com/team/busy:1"][3:5] == ["complete", "(4/4)"]
    assert rows["example.com/team/busy:1"][-1] == "true"
    assert hold("images", "check", "-q").stdout.decode().split() == [
        "example.com/team/busy:1", "x:1.0"]


def test_check_counts_missing_blobs(hold, two):
    man = json.loads(hold("content", "get", two["manifest"]).stdout)
    hold("content", "rm", man["layers"][2]["digest"], man["layers"][1]["digest"])
    [img] = json.loads(hold("images", "check", "--format", "json", "name==x:1.0").stdout)
    assert not img["complete"] and img["platforms"][0]["status"] == "2 blobs missing"
    assert img["status"] == "incomplete (2/4)" and img["unpacked"] is True
    sizes = {d["digest"]: d["size"] for d in [man["config"], *man["layers"]]}
    assert img["required_size"] == sum(sizes.values())
    assert img["present_size"] == img["required_size"] - sum(
        d["size"] for d in man["layers"][1:3])
    row = hold("images", "check", "name==x:1.0").stdout.decode().splitlines()[1]
    assert "incomplete (2/4)" in row and row.endswith("true")
    # Not ready (incomplete): -q leaves it out, as ctr's does.
    assert hold("images", "check", "-q", "name==x:1.0").stdout == b""


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


def test_check_of_a_partial_index_rows_per_platform(hold, archives):
    """ctr's row for the host's platform, then hold's own: one indented row per manifest, so
    the partial platforms show (ctr reports only the host's)."""
    hold("images", "import", "--progress", "none", archives["multi_tar"])
    m = archives["multi"]
    out = hold("images", "check").stdout.decode().splitlines()
    assert out[0].split() == ["REF", "TYPE", "DIGEST", "STATUS", "SIZE", "UNPACKED"]
    top = out[1].split()
    assert top[:3] == ["example.com/multi:1", "application/vnd.oci.image.index.v1+json",
                       m["index"]]
    assert top[3:5] == ["complete", "(4/4)"] and top[-1] == "true"
    sub = {r.split()[0]: r.split() for r in out[2:]}
    assert all(r.startswith("  ") for r in out[2:]) and len(out) == 6
    assert sub[m["host"]][2:5] == [m["present"], "complete", "(4/4)"]
    assert sub[m["host"]][-1] == "true"
    assert sub[m["other"]][2:] == [m["absent"], "unavailable", "(0/?)", "0.0", "B/?", "false"]
    assert sub[m["partial"]][3:5] == ["incomplete", "(1/3)"]
    assert sub[m["partial"]][-1] == "false"
    assert sub["attestation"][2:5] == [m["attestation"], "complete", "(2/2)"]
    assert sub["attestation"][-1] == "-"  # never "unpacked", never counted against the image

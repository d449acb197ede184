"""The pure marker: tables of graphs with their exact survivors, and a property against a naive
fixed-point walk."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cargohold.gc.mark import CONTENT, FLAT, IMAGE, SNAPSHOT, Node, mark, paths


def c(k):
    return Node(CONTENT, "ns", k)


def s(k):
    return Node(SNAPSHOT, "ns", k)


def i(k):
    return Node(IMAGE, "ns", k)


CASES = [
    ("no roots keep nothing", [], {c("a"): [c("b")]}, set()),
    ("a root keeps itself", [c("a")], {}, {c("a")}),
    ("chain", [i("img")], {i("img"): [c("idx")], c("idx"): [c("m")], c("m"): [c("l0")]},
     {i("img"), c("idx"), c("m"), c("l0")}),
    ("cycle ends", [c("a")], {c("a"): [c("b")], c("b"): [c("a")]}, {c("a"), c("b")}),
    ("unreached branch is garbage", [c("a")], {c("a"): [c("b")], c("x"): [c("y")]},
     {c("a"), c("b")}),
    ("snapshot parents", [s("top")], {s("top"): [s("mid")], s("mid"): [s("base")]},
     {s("top"), s("mid"), s("base")}),
    ("flat root stays flat in refs but plain in result", [c("a").flat()],
     {c("a"): [c("deep")], c("a").flat(): []}, {c("a")}),
    ("flat and plain both expand", [c("a").flat(), c("b")],
     {c("a"): [c("deep")], c("b"): [c("a")]}, {c("a"), c("b"), c("deep")}),
    ("shared child", [c("r1"), c("r2")], {c("r1"): [c("x")], c("r2"): [c("x")]},
     {c("r1"), c("r2"), c("x")}),
]


@pytest.mark.parametrize("name,roots,edges,expected", CASES, ids=[x[0] for x in CASES])
def test_mark_table(name, roots, edges, expected):
    assert mark(roots, lambda n: edges.get(n, ())) == expected


def test_deep_chain_has_no_recursion_limit():
    n = 50_000
    edges = {c(str(k)): [c(str(k + 1))] for k in range(n)}
    assert len(mark([c("0")], lambda x: edges.get(x, ()))) == n + 1


def test_paths_shortest_chain_from_a_root():
    edges = {i("img"): [(c("idx"), "image target")],
             c("idx"): [(c("m"), "label m.0")], c("m"): [(c("l"), "label l.0")],
             c("other"): [(c("l"), "label")]}
    chain = paths([i("img"), c("other")], lambda n: edges.get(n, ()), c("l"))
    assert chain == [(c("other"), "root"), (c("l"), "label")]
    assert paths([i("img")], lambda n: edges.get(n, ()), c("nope")) is None


def naive(roots, edges):
    live = {r.plain() for r in roots}
    frontier = set(roots)
    while True:
        new = set()
        for n in frontier:
            for ch in edges.get(n, ()):
                if ch.plain() not in live or ch not in frontier:
                    new.add(ch)
        grown = live | {x.plain() for x in new}
        if grown == live and all(x in frontier for x in new):
            return live
        live = grown
        frontier |= new


keys = st.sampled_from([str(k) for k in range(12)])
nodes = st.builds(lambda t, k, f: Node(t | (FLAT if f else 0), "ns", k),
                  st.sampled_from([CONTENT, SNAPSHOT, IMAGE]), keys, st.booleans())


@settings(max_examples=300, deadline=None)
@given(st.lists(nodes, max_size=6), st.dictionaries(nodes, st.lists(nodes, max_size=4),
                                                    max_size=30))
def test_mark_equals_naive_fixed_point(roots, edges):
    assert mark(roots, lambda n: edges.get(n, ())) == naive(roots, edges)


def test_scan_reads_sha256_and_sha512_records_alike(tmp_path):
    """The blob scan reads sha256 keys at a fixed offset and others by search: both count."""
    from cargohold.gc.scan import scan
    from cargohold.metadata.content import write_record
    from cargohold.metadata.db import open_db

    s256 = "sha256:" + hashlib.sha256(b"a").hexdigest()
    s512 = "sha512:" + hashlib.sha512(b"b").hexdigest()
    other = "sha256:" + hashlib.sha256(b"c").hexdigest()
    db = open_db(str(tmp_path))
    with db.update() as tx:
        write_record(tx, "ns", s512, 1, {"containerd.io/gc.ref.content.x": s256,
                                         "containerd.io/gc.root": "1"})
        write_record(tx, "ns", s256, 1, {"containerd.io/gc.ref.content": other,
                                         "containerd.io/gc.ref.snapshot.native": "snap",
                                         "plain": "ignored"})
        write_record(tx, "ns", other, 1, {})
    with db.view() as tx:
        g = scan(tx, 0)
    db.close()
    assert g.nodes == {(CONTENT, "ns", d) for d in (s256, s512, other)}
    assert g.refs_why((CONTENT, "ns", s512)) == [
        ((CONTENT, "ns", s256), "label containerd.io/gc.ref.content.x")]
    assert sorted(g.refs((CONTENT, "ns", s256))) == [
        (CONTENT, "ns", other), (SNAPSHOT, "ns", "native/snap")]
    assert ((CONTENT, "ns", s512), "label containerd.io/gc.root") in g.roots

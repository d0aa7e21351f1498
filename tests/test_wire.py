"""
The replication wire format: compact, validated, never unpickled.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from appliance.core.session import Delta, Full, Remove, Rotate, Touch
from appliance.core.store import Result
from appliance.replication import wire
from appliance.runtime import PYPY

NODES = {"s1", "s2"}
SID = "Q" * 22
RECORDS = [
    Delta(SID, 3, 7, "s1", "s2", {"cart": b'["a"]', "n": b"1"}, ("old",)),
    Delta(SID, 3, 8, "s1", None, {}, ()),
    Full(SID, 2, 5, "s1", "s2", 1800.0, 12.5, {"k\u00e9y": b'{"x":[1,2]}'}),
    Remove(SID, 4),
    Touch(SID, 4),
    Rotate(SID, "R" * 22, 4, 9, "s1", "s2"),
    Rotate(SID, "R" * 22, 4, 9, "s2", None),
    Full(SID, 2, 6, "s1", None, 60.0, 0.0, {}, (("R" * 22, 1799.5), ("P" * 22, 3.0))),
]


class WireTests(SynchronousTestCase):
    def test_round_trip(self):
        """Every record kind survives encode and decode unchanged."""
        self.assertEqual(wire.decode(wire.encode(RECORDS), NODES), RECORDS)

    def test_compact(self):
        """A one-key delta costs a few dozen bytes beyond its value."""
        delta = Delta(SID, 1, 2, "s1", "s2", {"n": b"1"}, ())
        self.assertLess(len(wire.encode([delta])), 70)

    def test_truncated(self):
        """Every truncation of a valid batch is refused, never half-applied."""
        data = wire.encode(RECORDS)
        for n in range(1, len(data)):
            try:
                records = wire.decode(data[:n], NODES)
            except wire.WireError:
                continue
            self.assertEqual(records, RECORDS[: len(records)])
            self.assertEqual(wire.encode(records), data[:n])

    def test_unknown_node(self):
        """A record naming a node outside the cluster is refused."""
        self.assertRaises(wire.WireError, wire.decode, wire.encode(RECORDS[:1]), {"s1"})

    def test_value_not_json(self):
        """A value that is not JSON is refused."""
        bad = Delta(SID, 1, 2, "s1", "s2", {"x": b"{not json"}, ())
        self.assertRaises(wire.WireError, wire.decode, wire.encode([bad]), NODES)

    def test_deeply_nested_value_refused(self):
        """A value nested deeper than the JSON parser recurses is refused with WireError, not RecursionError."""
        # CPython's parser recurses short of 5,000 levels; PyPy's short of 200,000.
        for depth in (200_000,) if PYPY else (5_000, 200_000):
            deep = Delta(SID, 1, 2, "s1", "s2", {"x": b"[" * depth + b"]" * depth}, ())
            with self.assertRaises(wire.WireError) as caught:
                wire.decode(wire.encode([RECORDS[3], deep]), NODES)
            self.assertIn("nested too deep", str(caught.exception))

    def test_bad_sid_format_and_kind(self):
        """A malformed sid, an unknown format or record kind is refused."""
        data = wire.encode([Remove(SID, 1)])
        self.assertRaises(wire.WireError, wire.decode, data.replace(b"Q", b"!", 1), NODES)
        self.assertRaises(wire.WireError, wire.decode, b"\x09" + data[1:], NODES)
        self.assertRaises(wire.WireError, wire.decode, data[:1] + b"\x09" + data[2:], NODES)
        self.assertRaises(wire.WireError, wire.decode, "text", NODES)

    @settings(max_examples=300)
    @given(st.binary(max_size=200))
    def test_garbage_never_crashes(self, data):
        """Random bytes either decode to records or raise WireError, nothing else."""
        try:
            wire.decode(b"\x01" + data, NODES)
        except wire.WireError:
            pass

    def test_chunks(self):
        """Payloads are split under Banana's 640 KiB limit and joined back."""
        payload = bytes(range(256)) * 8000
        chunks = wire.split(payload)
        self.assertTrue(all(len(c) <= 640 * 1024 for c in chunks))
        self.assertEqual(wire.join(chunks, len(payload)), payload)
        self.assertRaises(wire.WireError, wire.join, chunks, len(payload) - 1)
        self.assertRaises(wire.WireError, wire.join, ["text"], 100)
        self.assertRaises(wire.WireError, wire.join, [], 100)

    def test_digest_parts(self):
        """Digest parts cover every first character once, in order, and stay near their size unless one character alone is larger."""
        sizes = {"A": 5, "B": 5, "C": 20, "x": 1}
        parts = wire.digest_parts(sizes, 10)
        self.assertEqual("".join(parts), wire.SID_CHARS)
        self.assertTrue(all(wire.valid_prefixes(p) for p in parts))
        for p in parts:
            total = sum(sizes.get(c, 0) for c in p)
            self.assertTrue(total <= 10 or len(p) == 1 or total - sizes.get(p[-1], 0) <= 10, (p, total))
        self.assertIn("C", parts)
        self.assertEqual(wire.digest_parts({}, 10), [wire.SID_CHARS])

    def test_results_and_digest(self):
        """Result codes and digests round-trip; an unknown code reads as None, a mismatched answer is refused."""
        results = [Result.OK, Result.GAP, Result.FENCED, Result.DUPLICATE]
        self.assertEqual(wire.decode_results(wire.encode_results(results), 4), results)
        self.assertRaises(wire.WireError, wire.decode_results, b"\x00", 2)
        self.assertEqual(wire.decode_results(b"\x00\x09", 2), [Result.OK, None])
        entries = [(SID, 2**40, 7)]
        self.assertEqual(wire.decode_digest(wire.encode_digest(entries)), entries)
        self.assertRaises(wire.WireError, wire.decode_digest, b"x" * 33)


class RotationWireTests(SynchronousTestCase):
    def test_plain_full_state_unchanged(self):
        """A full state without former ids keeps the plain layout (kind 2) that older nodes read."""
        data = wire.encode([RECORDS[2]])
        self.assertEqual(data[1], 2)

    def test_malformed_rotation_refused(self):
        """A rotation to the same id, a bad old id, a former id with no time left or a bad count is refused."""
        bad = [
            wire.encode([Rotate(SID, SID, 1, 1, "s1", "s2")]),
            wire.encode([Rotate(SID, "R" * 22, 1, 1, "s1", "s2")]).replace(b"R" * 22, b"R" * 21 + b"!"),
            wire.encode([Full(SID, 1, 1, "s1", None, 60.0, 0.0, {}, (("R" * 22, 0.0),))]),
            wire.encode([Full(SID, 1, 1, "s1", None, 60.0, 0.0, {}, (("R" * 22, 5.0),))]).replace(
                b"\x00\x00\x00\x01RRRR", b"\x00\x00\x00\x00RRRR"
            ),
        ]
        for data in bad:
            self.assertRaises(wire.WireError, wire.decode, data, NODES)

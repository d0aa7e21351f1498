"""
Call records: a retry gets the recorded result, a dropped record is "lost".
"""

from __future__ import annotations

import json

from twisted.trial.unittest import SynchronousTestCase

from appliance.core import calls
from appliance.core.calls import DONE, LOST, NEW, CallId
from appliance.core.session import encode_value


class CallRecordTests(SynchronousTestCase):
    def test_new_then_done(self):
        """A call not recorded is new; once recorded its result comes back."""
        value = None
        self.assertEqual(calls.look(value, CallId("n", 1)), (NEW, None))
        value = calls.record(value, CallId("n", 1), '["a"]')
        self.assertEqual(calls.look(value, CallId("n", 1)), (DONE, '["a"]'))
        self.assertEqual(calls.look(value, CallId("n", 2)), (NEW, None))
        self.assertEqual(calls.look(value, CallId("m", 1)), (NEW, None))

    def test_bounded_and_dropped_is_lost(self):
        """Past KEEP records the oldest go, and a retry of one of them is lost, not new."""
        value = None
        for seq in range(1, calls.KEEP + 6):
            value = calls.record(value, CallId("n", seq), str(seq))
        self.assertEqual(len(value["done"]), calls.KEEP)
        self.assertEqual(calls.look(value, CallId("n", 5)), (LOST, None))
        self.assertEqual(calls.look(value, CallId("n", 6)), (DONE, "6"))
        self.assertEqual(calls.look(value, CallId("n", calls.KEEP + 6)), (NEW, None))

    def test_survives_the_session_encoding(self):
        """Records stored as a session value (canonical JSON) read back the same."""
        value = None
        for seq in range(1, calls.KEEP + 3):
            value = calls.record(value, CallId("a" if seq % 2 else "b", seq), json.dumps(seq))
        back = json.loads(encode_value(value))
        self.assertEqual(calls.look(back, CallId("a", 1)), (LOST, None))
        self.assertEqual(calls.look(back, CallId("b", calls.KEEP + 2)), (DONE, json.dumps(calls.KEEP + 2)))

    def test_nonce_floors_bounded(self):
        """Floors are kept for the last KEEP_NONCES nonces only, newest kept."""
        value = None
        for i in range(calls.KEEP + calls.KEEP_NONCES + 5):
            value = calls.record(value, CallId(f"n{i}", 1), "0")
        self.assertEqual(len(value["floors"]), calls.KEEP_NONCES)
        newest_dropped = calls.KEEP_NONCES + 4
        self.assertEqual(calls.look(value, CallId(f"n{newest_dropped}", 1)), (LOST, None))

    def test_garbage_reads_as_empty(self):
        """A records value of the wrong shape reads as no records."""
        self.assertEqual(calls.look("nonsense", CallId("n", 1)), (NEW, None))
        self.assertEqual(calls.look({"done": 3, "floors": "x"}, CallId("n", 1)), (NEW, None))

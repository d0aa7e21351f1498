"""
Call records: a retry gets the recorded result, an overwritten record is "lost".
"""

from __future__ import annotations

import json

from twisted.trial.unittest import SynchronousTestCase

from appliance.core import calls
from appliance.core.calls import DONE, LOST, NEW, CallId
from appliance.core.session import encode_value


def store(values, call, result):
    values[calls.slot(call)] = calls.record(call, result)


def look(values, call):
    return calls.look(values.get(calls.slot(call)), call)


class CallRecordTests(SynchronousTestCase):
    def test_new_then_done(self):
        """A call not recorded is new; once recorded its result comes back."""
        values = {}
        self.assertEqual(look(values, CallId("n", 1)), (NEW, None))
        store(values, CallId("n", 1), '["a"]')
        self.assertEqual(look(values, CallId("n", 1)), (DONE, '["a"]'))
        self.assertEqual(look(values, CallId("n", 2)), (NEW, None))

    def test_bounded_and_overwritten_is_lost(self):
        """KEEP slots hold the last KEEP calls; a retry of an overwritten one is lost, not new."""
        values = {}
        for seq in range(1, calls.KEEP + 6):
            store(values, CallId("n", seq), str(seq))
        self.assertEqual(sum(1 for k in values if k.startswith(calls.CALLS)), calls.KEEP)
        self.assertEqual(look(values, CallId("n", 5)), (LOST, None))
        self.assertEqual(look(values, CallId("n", 6)), (DONE, "6"))
        self.assertEqual(look(values, CallId("n", calls.KEEP + 6)), (NEW, None))

    def test_older_entry_in_slot_means_new(self):
        """A slot holding an older call of the same caller says the retried call did not commit."""
        values = {}
        store(values, CallId("n", 3), "x")
        self.assertEqual(look(values, CallId("n", 3 + calls.KEEP)), (NEW, None))

    def test_other_callers_entry_is_lost(self):
        """A slot holding another caller's record cannot vouch for this call: lost."""
        values = {}
        store(values, CallId("m", 3), "x")
        self.assertEqual(look(values, CallId("n", 3)), (LOST, None))

    def test_survives_the_session_encoding(self):
        """Records stored as session values (canonical JSON) read back the same."""
        values = {}
        store(values, CallId("a", 7), json.dumps({"k": [1, 2]}))
        back = {k: json.loads(encode_value(v)) for k, v in values.items()}
        self.assertEqual(look(back, CallId("a", 7)), (DONE, '{"k": [1, 2]}'))

    def test_garbage_reads_as_new(self):
        """A record of the wrong shape reads as no record."""
        self.assertEqual(calls.look("nonsense", CallId("n", 1)), (NEW, None))
        self.assertEqual(calls.look([1, 2], CallId("n", 1)), (NEW, None))

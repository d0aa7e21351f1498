"""
The application's view of a session and the changes it makes.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from appliance.core.session import Changes, NotJSON, SessionData, encode_value


class SessionDataTests(SynchronousTestCase):
    def test_set_is_a_change(self):
        """Setting a key is a change carrying its JSON bytes."""
        data = SessionData()
        data["user"] = "ann"
        self.assertEqual(data.changes(), Changes({"user": b'"ann"'}, ()))

    def test_in_place_mutation_is_a_change(self):
        """Appending to a stored list is detected (the change others lose on failover)."""
        data = SessionData({"cart": b'["a"]', "user": b'"ann"'})
        data["cart"].append("b")
        self.assertEqual(data.changes(), Changes({"cart": b'["a","b"]'}, ()))

    def test_nested_dict_mutation_is_a_change(self):
        """A change deep inside a nested value is detected."""
        data = SessionData({"prefs": b'{"a":{"b":1}}'})
        data["prefs"]["a"]["b"] = 2
        self.assertEqual(data.changes().set, {"prefs": b'{"a":{"b":2}}'})

    def test_read_only_is_no_change(self):
        """Reading values changes nothing."""
        data = SessionData({"cart": b'["a"]'})
        self.assertEqual(data["cart"], ["a"])
        self.assertEqual(list(data), ["cart"])
        self.assertFalse(data.changes())

    def test_setting_equal_value_is_no_change(self):
        """Writing back an equal value is not a change."""
        data = SessionData({"n": b"1"})
        data["n"] = 1
        self.assertFalse(data.changes())

    def test_delete(self):
        """Deleting a stored key is a removal; the key is gone from the view."""
        data = SessionData({"a": b"1", "b": b"2"})
        del data["a"]
        self.assertNotIn("a", data)
        self.assertEqual(len(data), 1)
        self.assertEqual(data.changes(), Changes({}, ("a",)))
        with self.assertRaises(KeyError):
            del data["zzz"]

    def test_delete_then_set(self):
        """A key deleted and set again is a set, not a removal."""
        data = SessionData({"a": b"1"})
        del data["a"]
        data["a"] = 5
        self.assertEqual(data.changes(), Changes({"a": b"5"}, ()))

    def test_not_json(self):
        """A value JSON cannot carry is refused at commit with a clear error."""
        data = SessionData()
        data["x"] = object()
        self.assertRaises(NotJSON, data.changes)
        self.assertRaises(NotJSON, data.__setitem__, 1, "non-string key")

    def test_nan_is_not_json(self):
        """NaN is not JSON and is refused."""
        self.assertRaises(NotJSON, encode_value, float("nan"))

    def test_canonical_encoding(self):
        """Equal dicts encode to equal bytes whatever their order."""
        self.assertEqual(encode_value({"b": 1, "a": 2}), encode_value({"a": 2, "b": 1}))

    def test_invalidate(self):
        """Logout marks the session for removal."""
        data = SessionData()
        data.invalidate()
        self.assertTrue(data.invalidated)

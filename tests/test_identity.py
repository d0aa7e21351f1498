"""
Summed identity: node numbers, the pair sum and what a client learns from it.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from appliance.core import identity


class IdentityTests(SynchronousTestCase):
    def test_derived_is_stable_and_in_range(self):
        """A derived number depends only on secret and name, and is 1..2**63-1."""
        a = identity.derived_id("secret-one", "s1")
        self.assertEqual(a, identity.derived_id("secret-one", "s1"))
        self.assertNotEqual(a, identity.derived_id("secret-one", "s2"))
        self.assertNotEqual(a, identity.derived_id("secret-two", "s1"))
        for name in ("s1", "s2", "x" * 60):
            self.assertTrue(0 < identity.derived_id("k", name) < 2**63)

    def test_subtract_learns_secondary(self):
        """The primary subtracts its number from the sum to name the secondary."""
        ids = {"s1": 1000, "s2": 20, "s3": 3}
        total = identity.pair_sum(ids, "s1", "s3")
        self.assertEqual(total, 1003)
        self.assertEqual(identity.secondary_of(ids, "s1", total), (True, "s3"))
        self.assertEqual(identity.secondary_of(ids, "s3", total), (True, "s1"))

    def test_lone_primary(self):
        """A session without a second copy carries the primary's number alone."""
        ids = {"s1": 1000, "s2": 20}
        self.assertEqual(identity.secondary_of(ids, "s1", identity.pair_sum(ids, "s1", None)), (True, None))

    def test_sum_naming_no_node(self):
        """A sum that names no secondary of the answering node is recognised as such."""
        ids = {"s1": 1000, "s2": 20}
        self.assertEqual(identity.secondary_of(ids, "s1", 1001), (False, None))
        self.assertEqual(identity.secondary_of(ids, "s9", 1020), (False, None))
        self.assertEqual(identity.secondary_of(ids, "s1", 2000), (False, None))

    def test_collision_found(self):
        """Two pairs with one sum, a node equal to a pair, and equal numbers are collisions."""
        self.assertEqual(identity.collision({"a": 1, "b": 10, "c": 3, "d": 8}), (("a", "b"), ("c", "d")))
        self.assertEqual(identity.collision({"a": 1, "b": 2, "c": 3}), (("c",), ("a", "b")))
        self.assertEqual(identity.collision({"a": 7, "b": 7}), (("a",), ("b",)))

    def test_derived_ids_of_many_nodes_do_not_collide(self):
        """Derived 63-bit numbers of a large cluster have unique pair sums."""
        ids = {f"n{i}": identity.derived_id("cluster-secret", f"n{i}") for i in range(60)}
        self.assertIsNone(identity.collision(ids))

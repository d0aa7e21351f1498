"""
The rules of a session: commit, apply, gaps, duplicates, fences, takeover,
expiry and digests, all without I/O.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from appliance.config import NodeConfig, Address
from appliance.core.session import Changes, Delta, Full, Remove, Rotate, SessionData, Touch
from appliance.core.store import GONE, Fenced, Result, Store, TooLarge, place_secondary

SID = "S" * 22
SID2 = "T" * 22


def changes(**values) -> Changes:
    data = SessionData()
    for k, v in values.items():
        data[k] = v
    return data.changes()


def pair(timeout=100.0):
    primary, backup = Store("s1", timeout), Store("s2", timeout)
    full = primary.create(SID, changes(cart=["a"]), "s2", now=0.0)
    backup.apply(full, now=0.0)
    return primary, backup


class CommitTests(SynchronousTestCase):
    def test_create(self):
        """A new session starts at version 1, epoch 1, primary here."""
        primary, _ = pair()
        s = primary.get(SID)
        self.assertEqual((s.version, s.epoch, s.primary, s.secondary), (1, 1, "s1", "s2"))

    def test_commit_bumps_version_and_returns_delta(self):
        """A committed change raises the version by one and yields the delta."""
        primary, _ = pair()
        s = primary.get(SID)
        delta = primary.commit(s, changes(user="ann"), now=1.0)
        self.assertEqual(delta, Delta(SID, 1, 2, "s1", "s2", {"user": b'"ann"'}, ()))
        self.assertEqual(s.version, 2)

    def test_no_change_no_delta(self):
        """A request that changed nothing only touches the session."""
        primary, _ = pair()
        s = primary.get(SID)
        self.assertIsNone(primary.commit(s, Changes(), now=5.0))
        self.assertEqual((s.version, s.last_access), (1, 5.0))

    def test_size_limit(self):
        """A session growing past the limit is refused and left as it was."""
        store = Store("s1", 100.0, max_bytes=50)
        store.create(SID, changes(a="x"), None, 0.0)
        s = store.get(SID)
        self.assertRaises(TooLarge, store.commit, s, changes(a="y" * 100), 1.0)
        self.assertEqual((s.version, s.values), (1, {"a": b'"x"'}))
        self.assertRaises(TooLarge, store.create, SID2, changes(a="y" * 100), None, 0.0)

    def test_commit_on_fenced_copy(self):
        """A copy that was handed over cannot commit."""
        primary, _ = pair()
        s = primary.get(SID)
        primary.hand_over(SID, "s3", now=1.0)
        self.assertRaises(Fenced, primary.commit, s, changes(x=1), 2.0)


class ApplyTests(SynchronousTestCase):
    def test_exact_base_applies(self):
        """A delta on exactly the version before it applies."""
        primary, backup = pair()
        delta = primary.commit(primary.get(SID), changes(user="ann"), 1.0)
        self.assertEqual(backup.apply(delta, 1.0), Result.OK)
        self.assertEqual(backup.get(SID).values, primary.get(SID).values)
        self.assertEqual(backup.get(SID).version, 2)

    def test_duplicate_is_acknowledged(self):
        """The same delta twice is a duplicate, acknowledged and ignored."""
        primary, backup = pair()
        delta = primary.commit(primary.get(SID), changes(user="ann"), 1.0)
        backup.apply(delta, 1.0)
        self.assertEqual(backup.apply(delta, 1.0), Result.DUPLICATE)
        self.assertTrue(Result.DUPLICATE.acknowledged)
        self.assertEqual(backup.get(SID).version, 2)

    def test_gap(self):
        """A delta past a missing one is a gap; nothing is applied."""
        primary, backup = pair()
        primary.commit(primary.get(SID), changes(a=1), 1.0)
        d3 = primary.commit(primary.get(SID), changes(b=2), 1.0)
        self.assertEqual(backup.apply(d3, 1.0), Result.GAP)
        self.assertEqual(backup.get(SID).version, 1)

    def test_unknown_session_is_a_gap(self):
        """A delta for a session the backup lacks asks for the full state."""
        primary, _ = pair()
        delta = primary.commit(primary.get(SID), changes(a=1), 1.0)
        self.assertEqual(Store("s3", 100.0).apply(delta, 1.0), Result.GAP)

    def test_older_epoch_is_fenced(self):
        """After a takeover, the old primary's delta is fenced."""
        primary, backup = pair()
        stale = primary.get(SID)
        backup.hand_over(SID, "s3", 1.0)
        old = Delta(SID, stale.epoch, 2, "s1", "s2", {"a": b"1"}, ())
        self.assertEqual(backup.apply(old, 1.0), Result.FENCED)
        self.assertEqual(backup.apply(Remove(SID, 1), 1.0), Result.FENCED)

    def test_full_replaces_and_old_full_is_duplicate(self):
        """A newer full state replaces a copy; an older one is ignored."""
        primary, backup = pair()
        s = primary.get(SID)
        primary.commit(s, changes(a=1), 1.0)
        newer = s.full(1.0)
        older = Full(SID, 1, 1, "s1", "s2", 100.0, 0.0, {"cart": b'["a"]'})
        self.assertEqual(backup.apply(newer, 1.0), Result.OK)
        self.assertEqual(backup.apply(older, 1.0), Result.DUPLICATE)
        self.assertEqual(backup.get(SID).values, s.values)

    def test_remove(self):
        """Logout removes the backup copy too; removing nothing is fine."""
        primary, backup = pair()
        removal = primary.remove(SID)
        self.assertEqual(backup.apply(removal, 1.0), Result.OK)
        self.assertIsNone(backup.get(SID))
        self.assertEqual(backup.apply(removal, 1.0), Result.OK)


class TakeoverTests(SynchronousTestCase):
    def test_old_primary_hands_over_and_serves_no_more(self):
        """The old primary hands over with epoch + 1; the copy it keeps names the requester its primary, so it is not its own to serve."""
        primary, backup = pair()
        full = primary.hand_over(SID, "s3", 1.0, 4)
        self.assertEqual((full.epoch, full.primary, full.secondary), (2, "s3", "s2"))
        kept = primary.get(SID)
        self.assertEqual((kept.epoch, kept.primary, kept.primary_inc), (2, "s3", 4))
        self.assertIsNone(primary.primary_of(SID))
        self.assertEqual(primary.primaries, 0)

    def test_secondary_hands_over_and_keeps_backup(self):
        """The secondary hands over and keeps backing the session under the new epoch."""
        primary, backup = pair()
        full = backup.hand_over(SID, "s3", 1.0)
        self.assertEqual((full.epoch, full.primary, full.secondary), (2, "s3", "s2"))
        kept = backup.get(SID)
        self.assertEqual((kept.epoch, kept.primary), (2, "s3"))

    def test_rival_of_the_same_epoch_changes_nothing(self):
        """A full state or a change of the epoch a backup holds, from another primary, is a rival's: refused, the copy kept as it was."""
        primary, backup = pair()
        rival = Store("s3", 100.0)
        rival.apply(primary.get(SID).full(0.0), 0.0)
        backup.promote(SID, "s1", 1.0)
        mine = rival.promote(SID, "s2", 1.0)
        self.assertEqual(mine.epoch, backup.get(SID).epoch)
        self.assertEqual(backup.apply(mine.full(1.0), 1.0), Result.RIVAL)
        delta = rival.commit(mine, changes(late=True), 2.0)
        self.assertEqual(backup.apply(delta, 2.0), Result.RIVAL)
        kept = backup.get(SID)
        self.assertEqual((kept.primary, kept.version, kept.values), ("s2", 1, {"cart": b'["a"]'}))

    def test_demoted_rival_keeps_its_copy(self):
        """A primary told of a rival stops serving its copy of that epoch but keeps the data for the look-ups."""
        primary, _ = pair()
        session = primary.get(SID)
        self.assertFalse(primary.demote(SID, session.epoch + 1))
        self.assertTrue(primary.demote(SID, session.epoch))
        self.assertIsNone(primary.primary_of(SID))
        self.assertEqual(primary.get(SID).values, {"cart": b'["a"]'})

    def test_adopt_then_old_primary_fenced(self):
        """A node that adopted a session fences the old primary's next write."""
        primary, backup = pair()
        third = Store("s3", 100.0)
        full = backup.hand_over(SID, "s3", 1.0)
        third.adopt(full, "s2", 1.0)
        stale = primary.get(SID)
        delta = primary.commit(stale, changes(late=True), 2.0)
        self.assertEqual(backup.apply(delta, 2.0), Result.FENCED)
        self.assertTrue(primary.fenced(SID, delta.epoch))
        self.assertIsNone(primary.get(SID))

    def test_promote_raises_epoch_above_floor(self):
        """A promoted backup's epoch beats the old one and any known floor."""
        _, backup = pair()
        s = backup.promote(SID, "s3", 1.0, floor=5)
        self.assertEqual((s.epoch, s.primary, s.secondary), (6, "s2", "s3"))

    def test_hand_over_unknown(self):
        """A node holding nothing hands nothing over."""
        self.assertIsNone(Store("s1", 1.0).hand_over(SID, "s2", 0.0))


class LifetimeTests(SynchronousTestCase):
    def test_idle_sessions_expire_on_both(self):
        """Idle sessions expire on primary and backup alike."""
        primary, backup = pair(timeout=10.0)
        self.assertEqual(primary.expired(9.9), [])
        self.assertEqual(primary.expired(10.0), [SID])
        self.assertEqual(backup.expired(10.0), [SID])

    def test_touch_keeps_backup_alive(self):
        """A read-only session touched on the backup does not expire there."""
        primary, backup = pair(timeout=10.0)
        touch = primary.touch(primary.get(SID), 8.0)
        self.assertEqual(touch, Touch(SID, 1))
        self.assertEqual(backup.apply(touch, 8.0), Result.OK)
        self.assertEqual(backup.expired(12.0), [])
        self.assertEqual(backup.expired(18.0), [SID])

    def test_full_carries_idle_time(self):
        """A full state keeps the time since last access, not the sender's clock."""
        primary, _ = pair(timeout=10.0)
        other = Store("s3", 10.0)
        other.apply(primary.get(SID).full(now=4.0), now=1000.0)
        self.assertEqual(other.get(SID).last_access, 996.0)


class DigestTests(SynchronousTestCase):
    def test_compare_finds_differences_and_drops_stale(self):
        """Digest comparison lists differing sessions and drops backups the primary no longer has."""
        primary, backup = pair()
        primary.create(SID2, changes(x=1), "s2", 0.0)
        primary.commit(primary.get(SID), changes(a=1), 1.0)
        stale = "U" * 22
        backup.apply(Full(stale, 1, 1, "s1", "s2", 100.0, 0.0, {}), 0.0)
        differ = backup.compare("s1", primary.digest("s2"))
        self.assertEqual(sorted(differ), [SID, SID2])
        self.assertIsNone(backup.get(stale))


    def test_compare_keeps_what_the_primary_holds_unprotected(self):
        """A primary that lost its secondary lists the copy anyway: the backup keeps it (it may be the only other one); one moved elsewhere is dropped."""
        primary, backup = pair()
        primary.create(SID2, changes(x=1), "s2", 0.0)
        backup.apply(primary.get(SID2).full(0.0), 0.0)
        primary.set_secondary(primary.get(SID), None, 1.0)
        primary.set_secondary(primary.get(SID2), "s3", 1.0)
        self.assertEqual(primary.digest_sizes("s2"), {"S": 1})
        self.assertEqual(backup.compare("s1", primary.digest("s2")), [])
        self.assertEqual(backup.get(SID).version, 1)
        self.assertIsNone(backup.get(SID2))
        self.assertEqual((primary.backed_count("s2"), primary.backed_count("s3")), (0, 1))


class PlacementTests(SynchronousTestCase):
    def node(self, name, machine, rack, site="a"):
        return NodeConfig(name, Address("127.0.0.1", 1), Address("127.0.0.1", 2), machine, rack, site)

    def test_furthest_then_least_loaded(self):
        """The secondary is the furthest node in the topology, then the least loaded."""
        me = self.node("s1", "m1", "r1")
        same_rack = self.node("s2", "m2", "r1")
        other_rack = self.node("s3", "m3", "r2")
        other_rack2 = self.node("s4", "m4", "r2")
        nodes = [me, same_rack, other_rack, other_rack2]
        self.assertEqual(place_secondary(me, nodes, {"s3": 5, "s4": 1}), "s4")
        self.assertEqual(place_secondary(me, nodes, {"s3": 0, "s4": 1}), "s3")
        other_site = self.node("s5", "m5", "r9", site="b")
        self.assertEqual(place_secondary(me, nodes + [other_site], {"s5": 99}), "s5")

    def test_pinned(self):
        """A pinned group limits the choice."""
        me = self.node("s1", "m1", "r1")
        nodes = [me, self.node("s2", "m2", "r1"), self.node("s3", "m3", "r2")]
        self.assertEqual(place_secondary(me, nodes, {}, pinned=("s2",)), "s2")

    def test_none_available(self):
        """With no other live node there is no secondary."""
        me = self.node("s1", "m1", "r1")
        self.assertIsNone(place_secondary(me, [me], {}))


# -- convergence under a hostile stream ------------------------------------

SIDS = ["A" * 22, "B" * 22, "C" * 22]
write = st.tuples(
    st.just("write"), st.sampled_from(SIDS), st.sampled_from(["k1", "k2", "k3"]),
    st.one_of(st.none(), st.integers(0, 9), st.lists(st.integers(0, 3), max_size=3)),
)
network = st.tuples(st.sampled_from(["deliver", "duplicate", "reorder", "drop", "cut", "remove"]), st.integers(0, 20))
steps = st.lists(st.one_of(write, network), max_size=60)


class ConvergenceTests(SynchronousTestCase):
    @settings(max_examples=300, deadline=None)
    @given(steps)
    def test_backup_converges_after_digest(self, script):
        """Any writes, with the stream duplicated, reordered, dropped or cut, converge after one digest round."""
        primary, backup = Store("s1", 1e9), Store("s2", 1e9)
        stream = []
        retired = set()  # a removed session's id is never used again (ids are 128 random bits)

        def send_results(records):
            for record in records:
                result = backup.apply(record, 0.0)
                if result is Result.GAP:
                    s = primary.primary_of(record.sid)
                    if s is not None:
                        stream.append(s.full(0.0))

        for step in script:
            if step[0] == "write":
                _, sid, key, value = step
                if sid in retired:
                    continue
                s = primary.get(sid)
                data = SessionData(s.values if s else None)
                if value is None:
                    data.pop(key, None)
                else:
                    data[key] = value
                    if isinstance(value, list) and key in data:
                        data[key].append(7)
                c = data.changes()
                if s is None:
                    if c:
                        stream.append(primary.create(sid, c, "s2", 0.0))
                else:
                    delta = primary.commit(s, c, 0.0)
                    if delta is not None:
                        stream.append(delta)
                continue
            kind, n = step
            if not stream:
                continue
            i = n % len(stream)
            if kind == "deliver":
                send_results([stream.pop(0)])
            elif kind == "duplicate":
                send_results([stream[i]])
            elif kind == "reorder":
                send_results([stream.pop(i)])
            elif kind == "drop":
                stream.pop(i)
            elif kind == "cut":
                stream.clear()
            elif kind == "remove":
                retired.add(stream[i].sid)
                removal = primary.remove(stream[i].sid)
                if removal is not None:
                    stream.append(removal)
        send_results(list(stream))
        stream.clear()
        for sid in backup.compare("s1", primary.digest("s2")):
            send_results([primary.get(sid).full(0.0)])
        send_results(list(stream))
        mine = {sid: (s.values, s.version, s.epoch) for sid, s in primary.sessions.items()}
        theirs = {sid: (s.values, s.version, s.epoch) for sid, s in backup.sessions.items()}
        self.assertEqual(theirs, mine)
        for s in backup.sessions.values():
            self.assertEqual(s.size, sum(len(v) for v in s.values.values()))


NEW = "N" * 22


class RotationTests(SynchronousTestCase):
    def rotated(self):
        primary, backup = pair()
        record = primary.rotate(primary.get(SID), NEW, now=10.0)
        return primary, backup, record

    def test_rotate_keeps_data_under_new_id(self):
        """Rotation moves the primary's copy to the new id with its data, version and epoch; the old id is dead."""
        primary, _, record = self.rotated()
        self.assertEqual(record, Rotate(NEW, SID, 1, 1, "s1", "s2"))
        self.assertIsNone(primary.get(SID))
        s = primary.get(NEW)
        self.assertEqual((s.sid, s.values, s.version, s.epoch), (NEW, {"cart": b'["a"]'}, 1, 1))
        self.assertTrue(primary.gone(SID))
        self.assertEqual(primary.copies([SID, NEW]), [(SID, GONE, 0, "s1", 0), (NEW, 1, 1, "s1", 0)])

    def test_backup_applies_rotation(self):
        """The backup renames its copy and reports the old id dead; a duplicate is acknowledged."""
        _, backup, record = self.rotated()
        self.assertEqual(backup.apply(record, now=10.0), Result.OK)
        self.assertEqual(backup.get(NEW).values, {"cart": b'["a"]'})
        self.assertTrue(backup.gone(SID))
        self.assertIsNone(backup.get(SID))
        self.assertEqual(backup.apply(record, now=11.0), Result.DUPLICATE)

    def test_rotation_on_a_gap_waits_for_the_full_state(self):
        """A backup without the exact copy answers gap and the old id dies with the full state, which carries it."""
        primary, backup, record = self.rotated()
        lagging = Store("s3", 100.0)
        self.assertEqual(lagging.apply(record, now=10.0), Result.GAP)
        self.assertFalse(lagging.gone(SID))
        full = primary.get(NEW).full(12.0)
        self.assertEqual(full.former, ((SID, 98.0),))
        self.assertEqual(lagging.apply(full, now=50.0), Result.OK)
        self.assertTrue(lagging.gone(SID))
        self.assertEqual(lagging.tombstones[SID], 148.0)

    def test_rotation_of_an_older_epoch_is_fenced(self):
        """A backup holding a newer epoch of the old id fences the rotation."""
        _, backup, record = self.rotated()
        backup.get(SID).epoch = 2
        self.assertEqual(backup.apply(record, now=10.0), Result.FENCED)
        self.assertFalse(backup.gone(SID))

    def test_rotation_from_a_rival_primary(self):
        """A rotation of the epoch the backup holds from another primary is a rival's: nothing renamed, nothing buried."""
        _, backup, record = self.rotated()
        backup.get(SID).primary = "s3"
        self.assertEqual(backup.apply(record, now=10.0), Result.RIVAL)
        self.assertFalse(backup.gone(SID))
        self.assertIsNotNone(backup.get(SID))
        self.assertIsNone(backup.get(NEW))

    def test_unrotate_gives_the_old_id_back(self):
        """A refused rotation is undone on the primary: the copy is under its old id again, which is not dead, and carries no former id."""
        primary, _, _ = self.rotated()
        primary.unrotate(NEW, SID)
        self.assertIsNone(primary.get(NEW))
        s = primary.get(SID)
        self.assertEqual((s.sid, s.former, s.values), (SID, (), {"cart": b'["a"]'}))
        self.assertFalse(primary.gone(SID))
        pairs, primaries = recount(primary)
        self.assertEqual({k: {c: set(b) for c, b in v.items()} for k, v in primary._pairs.items()}, pairs)
        self.assertEqual((primary.primaries, primary.expired(1000.0)), (primaries, [SID]))

    def test_full_state_drops_orphan_of_former_id(self):
        """A full state naming a former id drops a copy held under that id and refuses late copies of it."""
        primary, _, _ = self.rotated()
        orphan = Store("s3", 100.0)
        orphan.apply(Full(SID, 1, 1, "s1", "s3", 100.0, 0.0, {"cart": b'["a"]'}), now=0.0)
        orphan.apply(primary.get(NEW).full(10.0), now=10.0)
        self.assertIsNone(orphan.get(SID))
        self.assertEqual(orphan.apply(Full(SID, 1, 1, "s1", "s3", 100.0, 0.0, {}), now=11.0), Result.FENCED)
        taken = orphan.adopt(primary.get(NEW).full(10.0), None, now=10.0)
        self.assertEqual(taken.former, ((SID, 110.0),))

    def test_tombstones_expire_with_the_lifetime(self):
        """A tombstone lasts as long as a copy of the old id could (its lifetime), then goes."""
        primary, _, _ = self.rotated()
        primary.get(NEW).last_access = 100.0
        primary.expired(109.9)
        self.assertTrue(primary.gone(SID))
        primary.expired(110.0)
        self.assertFalse(primary.gone(SID))
        self.assertEqual(primary.get(NEW).full(110.0).former, ())

    def test_rotate_twice_keeps_both_former_ids(self):
        """A second rotation keeps the first former id dead too, in the full state."""
        primary, _, _ = self.rotated()
        primary.rotate(primary.get(NEW), SID2, now=20.0)
        self.assertEqual([f[0] for f in primary.get(SID2).full(20.0).former], [SID, NEW])
        self.assertTrue(primary.gone(SID) and primary.gone(NEW))

    def test_only_primary_rotates(self):
        """A backup copy cannot be rotated."""
        _, backup = pair()
        self.assertRaises(Fenced, backup.rotate, backup.get(SID), NEW, 1.0)


class SessionLifetimeTests(SynchronousTestCase):
    def test_new_session_lifetime(self):
        """A session created with a lifetime lives that long idle."""
        store = Store("s1", 100.0)
        data = SessionData(default_timeout=100.0)
        data["a"] = 1
        data.timeout = 5
        store.create(SID, data.changes(), None, 0.0)
        self.assertEqual(store.get(SID).timeout, 5.0)
        self.assertEqual(store.expired(5.0), [SID])

    def test_lifetime_change_sends_full_state(self):
        """Changing a session's lifetime commits a version and sends the full state, which carries it."""
        primary, backup = pair()
        s = primary.get(SID)
        data = SessionData(s.values, s.timeout, 100.0)
        data.timeout = 3600
        record = primary.commit(s, data.changes(), now=1.0)
        self.assertIsInstance(record, Full)
        self.assertEqual((record.version, record.timeout), (2, 3600.0))
        self.assertEqual(backup.apply(record, now=1.0), Result.OK)
        self.assertEqual(backup.get(SID).timeout, 3600.0)
        data = SessionData(s.values, s.timeout, 100.0)
        data.timeout = None
        self.assertEqual(primary.commit(s, data.changes(), now=2.0).timeout, 100.0)

    def test_same_lifetime_is_no_change(self):
        """Setting the lifetime a session already has changes nothing."""
        data = SessionData({}, 100.0, 100.0)
        data.timeout = 100
        self.assertFalse(data.changes())
        data.timeout = None
        self.assertFalse(data.changes())

def recount(store):
    """
    What the store's indexes and count must say, found by walking every copy.
    """
    pairs = {}
    for s in store.sessions.values():
        pairs.setdefault((s.primary, s.secondary), {}).setdefault(s.sid[0], set()).add(s.sid)
    return pairs, sum(1 for s in store.sessions.values() if store.mine(s))


INDEX_SIDS = [c * 22 for c in "ABab01-_"]
peers = st.sampled_from(["s2", "s3", None])
operation = st.one_of(
    st.tuples(st.just("create"), st.sampled_from(INDEX_SIDS), peers),
    st.tuples(st.just("commit"), st.sampled_from(INDEX_SIDS), st.integers(0, 3)),
    st.tuples(st.just("secondary"), st.sampled_from(INDEX_SIDS), peers),
    st.tuples(st.just("full"), st.sampled_from(INDEX_SIDS), st.sampled_from(["s2", "s3"]), st.integers(1, 4), peers),
    st.tuples(st.just("remove"), st.sampled_from(INDEX_SIDS), st.integers(0, 4)),
    st.tuples(st.just("hand_over"), st.sampled_from(INDEX_SIDS), st.sampled_from(["s2", "s3"])),
    st.tuples(st.just("promote"), st.sampled_from(INDEX_SIDS), peers),
    st.tuples(st.just("fenced"), st.sampled_from(INDEX_SIDS), st.integers(0, 4)),
    st.tuples(st.just("incarnation"), st.just(None), st.just(None)),
    st.tuples(st.just("compare"), st.sampled_from(["s2", "s3"]), st.sampled_from([None, "Aa", "0-_B"])),
    st.tuples(st.just("wait"), st.floats(0, 40), st.just(None)),
    st.tuples(st.just("rotate"), st.sampled_from(INDEX_SIDS), st.sampled_from(INDEX_SIDS)),
    st.tuples(st.just("demote"), st.sampled_from(INDEX_SIDS), st.integers(0, 4)),
    st.tuples(st.just("unrotate"), st.sampled_from(INDEX_SIDS), st.sampled_from(INDEX_SIDS)),
)


class IndexTests(SynchronousTestCase):
    @settings(max_examples=300, deadline=None)
    @given(st.lists(operation, max_size=40))
    def test_indexes_follow_every_change(self, ops):
        """Under any sequence of changes the pair index, the primaries count and the expiry wheel agree with a walk of every copy."""
        store = Store("s1", 30.0)
        now = 0.0
        for op in ops:
            kind, a, b, *rest = op
            s = store.get(a) if kind not in ("wait", "incarnation", "compare") else None
            if kind == "create" and s is None:
                store.create(a, changes(x=1), b, now)
            elif kind == "commit" and s is not None and store.mine(s):
                store.commit(s, changes(x=b), now)
            elif kind == "secondary" and s is not None and store.mine(s):
                store.set_secondary(s, b, now)
            elif kind == "full":
                store.apply(Full(a, rest[0], 1, b, rest[1], 30.0, 0.0, {}), now, incarnation=7)
            elif kind == "remove":
                store.apply(Remove(a, b), now)
            elif kind == "hand_over":
                store.hand_over(a, b, now, 9)
            elif kind == "promote":
                store.promote(a, b, now)
            elif kind == "fenced":
                store.fenced(a, b)
            elif kind == "incarnation":
                store.incarnation += 1
            elif kind == "rotate" and s is not None and store.mine(s) and b not in store.sessions and not store.gone(b):
                store.rotate(s, b, now)
            elif kind == "demote":
                store.demote(a, b)
            elif kind == "unrotate":
                store.unrotate(a, b)
            elif kind == "compare":
                store.compare(a, store.digest(a)[:1], 7, b)
            elif kind == "wait":
                now += a
                overdue = {sid for sid, s in store.sessions.items() if now >= s.last_access + s.timeout + 1.0}
                due = {sid for sid, s in store.sessions.items() if now >= s.last_access + s.timeout}
                gone = set(store.expired(now))
                self.assertLessEqual(overdue, gone)
                self.assertLessEqual(gone, due)
                self.assertTrue(all(sid not in store.sessions for sid in gone))
            pairs, primaries = recount(store)
            indexed = {k: {c: set(b) for c, b in v.items()} for k, v in store._pairs.items()}
            self.assertEqual(indexed, pairs, op)
            self.assertEqual(store.primaries, primaries, op)
            for sid, session in store.sessions.items():
                self.assertGreater(session.due, 0)

    def test_expiry_looks_only_at_due_sessions(self):
        """A sweep removes what is due, at most its limit at a time, and never an idle session before its timeout."""
        store = Store("s1", 10.0)
        for i in range(5):
            store.create(INDEX_SIDS[i], changes(x=i), "s2", now=float(i))
        store.touch(store.get(INDEX_SIDS[0]), 8.0)
        self.assertEqual(store.expired(10.0), [])
        self.assertEqual(store.expired(12.0, limit=1), [INDEX_SIDS[1]])
        self.assertEqual(sorted(store.expired(12.0)), [INDEX_SIDS[2]])
        self.assertEqual(sorted(store.expired(100.0)), sorted([INDEX_SIDS[0], INDEX_SIDS[3], INDEX_SIDS[4]]))
        self.assertEqual(len(store), 0)

    def test_sweep_bounds_what_it_looks_at(self):
        """A sweep looks at most at its limit of due entries, even when none of them has expired (they were used since), and says when more are due."""
        store = Store("s1", 10.0)
        for i in range(5):
            store.create(INDEX_SIDS[i], changes(x=i), "s2", now=0.0)
            store.touch(store.get(INDEX_SIDS[i]), 9.0)
        looked = 0
        while store.expiry_due(10.0):
            self.assertEqual(store.expired(10.0, limit=2), [])
            looked += 1
        self.assertEqual(looked, 3)
        self.assertEqual(sorted(store.expired(19.0)), sorted(INDEX_SIDS[:5]))

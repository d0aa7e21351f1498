"""
The PB replication edge, in memory: authentication, every remote method,
malformed and oversize messages, fenced replies.
"""

from __future__ import annotations

from twisted.cred.credentials import UsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.internet.task import Clock
from twisted.spread import pb
from twisted.spread.jelly import InsecureJelly
from twisted.test.iosim import connectedServerAndClient
from twisted.trial.unittest import SynchronousTestCase

from appliance.config import ClusterConfig
from appliance.core.membership import Renewal
from appliance.core.session import Changes, Delta, Full, Remove
from appliance.core.store import Result
from appliance.replication import peer, wire
from appliance.server.node import SessionNode

from .helpers import cluster_ini, quorum_for

SID = "P" * 22


def make_node(name="s2", max_bytes="16MiB", clock=None):
    text, _ = cluster_ini(extra=f"max_session_bytes = {max_bytes}")
    cluster = ClusterConfig.from_string(text)
    clock = clock or Clock()
    node = SessionNode(
        clock, cluster, name, now=clock.seconds, call=None, connected=lambda p: False,
        peer_load=lambda p: 0, send=None, quorum=quorum_for(clock, cluster, name, clock.seconds, incarnation=7),
    )
    return node, cluster


class PeerEdgeTests(SynchronousTestCase):
    def connect(self, user=b"s1/5", secret=b"test-secret-123", max_bytes="16MiB"):
        self.node, cluster = make_node(max_bytes=max_bytes)
        self.clock = Clock()
        server_factory = peer.server_factory(
            self.node, cluster.node_names, cluster.cluster.secret, self.node.limit, self.clock, 5.0
        )
        client_factory = pb.PBClientFactory()
        client, server, self.pump = connectedServerAndClient(
            lambda: server_factory.buildProtocol(None), lambda: client_factory.buildProtocol(None)
        )
        d = client_factory.login(UsernamePassword(user, secret))
        self.pump.flush()
        return d

    def call(self, remote, name, *args):
        d = remote.callRemote(name, *args)
        self.pump.flush()
        return d

    def logged_in(self):
        return self.successResultOf(self.connect())

    def test_login_and_replicate(self):
        """A peer with the secret logs in and its full state is applied."""
        remote = self.logged_in()
        full = Full(SID, 1, 1, "s1", "s2", 60.0, 0.0, {"cart": b'["a"]'})
        answer = self.successResultOf(self.call(remote, "replicate", wire.split(wire.encode([full]))))
        self.assertEqual(wire.decode_results(answer, 1), [Result.OK])
        self.assertEqual(self.node.store.get(SID).values, {"cart": b'["a"]'})

    def test_wrong_secret_refused(self):
        """A wrong secret is refused at login and reaches nothing."""
        failure = self.failureResultOf(self.connect(secret=b"wrong-secret"))
        failure.trap(UnauthorizedLogin)
        self.flushLoggedErrors(UnauthorizedLogin)
        self.assertEqual(len(self.node.store), 0)

    def test_unknown_peer_refused(self):
        """A name that is not a configured node, or has no incarnation, is refused even with the secret."""
        for user in (b"intruder/5", b"s1", b"s1/", b"s1/-3", b"s1/x", b"s1/" + b"9" * 30, "s1/\u0663".encode("utf-8")):
            self.failureResultOf(self.connect(user=user)).trap(UnauthorizedLogin)
        self.flushLoggedErrors(UnauthorizedLogin)

    def test_login_carries_incarnation(self):
        """A login makes the peer's incarnation known, and a newer one supersedes it."""
        self.logged_in()
        self.assertEqual(self.node.quorum.incarnation_of("s1"), 5)
        self.assertFalse(self.node.quorum.is_dead("s1", 5))
        self.node.quorum.seen("s1", 6)
        self.assertTrue(self.node.quorum.is_dead("s1", 5))

    def test_malformed_batch_refused_link_survives(self):
        """A malformed batch is refused with a PB error; the link goes on working."""
        remote = self.logged_in()
        for bad in ([b"\x01garbage"], "not a list", [b"ok", 5], [{"a": 1}]):
            failure = self.failureResultOf(self.call(remote, "replicate", bad))
            failure.trap(pb.Error)
        full = Full(SID, 1, 1, "s1", "s2", 60.0, 0.0, {})
        answer = self.successResultOf(self.call(remote, "replicate", [wire.encode([full])]))
        self.assertEqual(answer, b"\x00")

    def test_cannot_replicate_for_another_primary(self):
        """A peer cannot write records claiming another node is primary."""
        remote = self.logged_in()
        forged = Full(SID, 1, 1, "s3", "s2", 60.0, 0.0, {})
        self.failureResultOf(self.call(remote, "replicate", [wire.encode([forged])])).trap(peer.Refused)
        self.assertIsNone(self.node.store.get(SID))

    def test_large_session_in_chunks(self):
        """A session larger than one Banana string crosses in chunks."""
        remote = self.logged_in()
        big = b'"' + b"x" * (1500 * 1024) + b'"'
        full = Full(SID, 1, 1, "s1", "s2", 60.0, 0.0, {"blob": big})
        chunks = wire.split(wire.encode([full]))
        self.assertGreater(len(chunks), 2)
        self.successResultOf(self.call(remote, "replicate", chunks))
        self.assertEqual(self.node.store.get(SID).values["blob"], big)

    def test_oversize_refused_link_survives(self):
        """A payload over the session limit is refused clearly and other sessions still replicate."""
        d = self.connect(max_bytes="64KiB")
        remote = self.successResultOf(d)
        big = b'"' + b"x" * (2 * 1024 * 1024) + b'"'
        full = Full(SID, 1, 1, "s1", "s2", 60.0, 0.0, {"blob": big})
        failure = self.failureResultOf(self.call(remote, "replicate", wire.split(wire.encode([full]))))
        failure.trap(peer.Refused)
        self.assertIn("over", failure.getErrorMessage())
        small = Full("R" * 22, 1, 1, "s1", "s2", 60.0, 0.0, {"a": b"1"})
        self.successResultOf(self.call(remote, "replicate", [wire.encode([small])]))
        self.assertIsNotNone(self.node.store.get("R" * 22))

    def test_hand_over(self):
        """A backup is handed over (epoch + 1) only once its primary is known dead; an unknown sid is NoSuchSession."""
        remote = self.logged_in()
        self.node.quorum.membership.lease.granted("s1", 0.0)
        self.node.quorum.seen("s3", 4)
        self.node.store.apply(Full(SID, 1, 3, "s3", "s2", 60.0, 0.0, {"a": b"1"}), 0.0, 4)
        self.failureResultOf(self.call(remote, "hand_over", SID, -1)).trap(peer.PrimaryAlive)
        chunks = self.successResultOf(self.call(remote, "hand_over", SID, 4))
        full = peer.decode_hand_over(chunks, {"s1", "s2", "s3"}, 10**6)
        self.assertEqual((full.epoch, full.version, full.primary, full.values), (2, 3, "s1", {"a": b"1"}))
        self.assertEqual(self.node.store.get(SID).primary_inc, 5)
        self.failureResultOf(self.call(remote, "hand_over", "Z" * 22, -1)).trap(peer.NoSuchSession)
        self.failureResultOf(self.call(remote, "hand_over", "../etc", -1)).trap(peer.Refused)
        self.failureResultOf(self.call(remote, "hand_over", SID, "4")).trap(peer.Refused)

    def test_primary_hands_over(self):
        """A primary hands its session over (and drops its copy) only while it holds its lease."""
        remote = self.logged_in()
        self.node.store.incarnation = 7
        self.node.store.create(SID, Changes({"a": b"1"}), "s3", 0.0)
        self.failureResultOf(self.call(remote, "hand_over", SID, -1)).trap(peer.NotNow)
        self.node.quorum.membership.lease.granted("s3", 0.0)
        chunks = self.successResultOf(self.call(remote, "hand_over", SID, -1))
        full = peer.decode_hand_over(chunks, {"s1", "s2", "s3"}, 10**6)
        self.assertEqual((full.epoch, full.primary, full.secondary), (2, "s1", "s3"))
        self.assertIsNone(self.node.store.primary_of(SID))

    def test_locate(self):
        """locate answers (epoch, version, primary, incarnation) of the copies held, nothing for others."""
        remote = self.logged_in()
        self.node.store.apply(Full(SID, 3, 9, "s1", "s2", 60.0, 0.0, {}), 0.0, 5)
        chunks = self.successResultOf(self.call(remote, "locate", [wire.encode_sids([SID, "Q" * 22])]))
        self.assertEqual(wire.decode_copies(wire.join(chunks, 10**6), {"s1", "s2", "s3"}), [(SID, 3, 9, "s1", 5)])
        self.failureResultOf(self.call(remote, "locate", [b"short"])).trap(peer.Refused)

    def test_fenced_reply(self):
        """After a takeover, a delta from the old epoch is answered 'fenced'."""
        remote = self.logged_in()
        self.node.store.apply(Full(SID, 1, 1, "s1", "s2", 60.0, 0.0, {}), 0.0)
        self.node.store.hand_over(SID, "s3", 0.0)
        late = Delta(SID, 1, 2, "s1", "s2", {"a": b"1"}, ())
        answer = self.successResultOf(self.call(remote, "replicate", [wire.encode([late, Remove(SID, 1)])]))
        self.assertEqual(wire.decode_results(answer, 2), [Result.FENCED, Result.FENCED])
        self.assertEqual(self.node.store.get(SID).values, {})

    def test_dead_incarnation_fenced(self):
        """Records from an incarnation known dead are answered 'fenced' and applied nowhere."""
        remote = self.logged_in()
        self.node.quorum.seen("s1", 6)
        full = Full(SID, 1, 1, "s1", "s2", 60.0, 0.0, {})
        answer = self.successResultOf(self.call(remote, "replicate", [wire.encode([full])]))
        self.assertEqual(wire.decode_results(answer, 1), [Result.FENCED])
        self.assertIsNone(self.node.store.get(SID))

    def test_digest(self):
        """A digest returns the sids whose copies differ."""
        remote = self.logged_in()
        self.node.store.apply(Full(SID, 1, 1, "s1", "s2", 60.0, 0.0, {}), 0.0)
        other = "O" * 22
        digest = wire.encode_digest([(SID, 1, 1), (other, 4, 1)])
        answer = self.successResultOf(self.call(remote, "digest", [digest]))
        self.assertEqual(peer.decode_sids(wire.join(answer, 10**6)), [other])
        self.failureResultOf(self.call(remote, "digest", [b"abc"])).trap(peer.Refused)

    def test_digest_in_parts(self):
        """A digest part covers the sids starting with its characters: only copies there that it leaves out are dropped; an entry outside its part or a malformed part is refused."""
        remote = self.logged_in()
        first, second = "A" * 22, "B" * 22
        for sid in (first, second):
            self.node.store.apply(Full(sid, 1, 1, "s1", "s2", 60.0, 0.0, {}), 0.0, 5)
        answer = self.successResultOf(self.call(remote, "digest", [wire.encode_digest([])], "A"))
        self.assertEqual(peer.decode_sids(wire.join(answer, 10**6)), [])
        self.assertIsNone(self.node.store.get(first))
        self.assertIsNotNone(self.node.store.get(second))
        outside = wire.encode_digest([(second, 1, 1)])
        self.failureResultOf(self.call(remote, "digest", [outside], "A")).trap(peer.Refused)
        for bad in ("", "AA", "!", 7, "A" * 65):
            self.failureResultOf(self.call(remote, "digest", [wire.encode_digest([])], bad)).trap(peer.Refused)

    def test_drain_request(self):
        """An authenticated peer's drain request reaches the node's hook; nothing else happens to its sessions."""
        remote = self.logged_in()
        asked = []
        self.node.on_drain_request = lambda: asked.append(True)
        self.node.store.apply(Full(SID, 1, 1, "s1", "s2", 60.0, 0.0, {}), 0.0, 5)
        self.assertIsNone(self.successResultOf(self.call(remote, "drain")))
        self.assertEqual(asked, [True])
        self.assertIsNotNone(self.node.store.get(SID))

    def test_renew_reports_grant_load_and_incarnation(self):
        """renew grants the lease and answers with how many sessions the node holds and its incarnation."""
        remote = self.logged_in()
        self.node.store.apply(Full(SID, 1, 1, "s1", "s2", 60.0, 0.0, {}), 0.0, 5)
        self.assertEqual(tuple(self.successResultOf(self.call(remote, "renew"))), (0, 1, 7))
        self.node.quorum.seen("s1", 6)
        self.assertEqual(self.successResultOf(self.call(remote, "renew"))[0], int(Renewal.DEAD))

    def test_vote(self):
        """vote answers whether this voter holds that incarnation dead; malformed questions are refused."""
        remote = self.logged_in()
        self.node.quorum.seen("s3", 4)
        self.assertIs(self.successResultOf(self.call(remote, "vote", "s3", 3)), True)
        self.assertIs(self.successResultOf(self.call(remote, "vote", "s2", 7)), False)
        self.assertIs(self.successResultOf(self.call(remote, "vote", "s2", 6)), True)
        for args in (("nobody", 1), ("s3", -1), ("s3", "4"), ("s3", 2**70)):
            self.failureResultOf(self.call(remote, "vote", *args)).trap(peer.Refused)

    def test_no_copyable_from_network(self):
        """An object sent as a Copyable is refused by the jelly security options."""
        remote = self.logged_in()

        class Sneaky(pb.Copyable):
            pass

        self.failureResultOf(self.call(remote, "replicate", [Sneaky()]))
        self.assertEqual(len(self.flushLoggedErrors(InsecureJelly)), 1)
        self.assertEqual(len(self.node.store), 0)

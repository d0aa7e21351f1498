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
from appliance.core.session import Delta, Full, Remove
from appliance.core.store import Result
from appliance.replication import peer, wire
from appliance.server.node import SessionNode

from .helpers import cluster_ini

SID = "P" * 22


def make_node(name="s2", max_bytes="16MiB"):
    text, _ = cluster_ini(extra=f"max_session_bytes = {max_bytes}")
    cluster = ClusterConfig.from_string(text)
    return SessionNode(
        Clock(), cluster, name, now=lambda: 0.0, call=None, connected=lambda p: False,
        peer_load=lambda p: 0, send=None,
    ), cluster


class PeerEdgeTests(SynchronousTestCase):
    def connect(self, user=b"s1", secret=b"test-secret-123", max_bytes="16MiB"):
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
        """A name that is not a configured node is refused even with the secret."""
        self.failureResultOf(self.connect(user=b"intruder")).trap(UnauthorizedLogin)
        self.flushLoggedErrors(UnauthorizedLogin)

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
        """hand_over returns the full state with a raised epoch; an unknown sid is NoSuchSession."""
        remote = self.logged_in()
        self.node.store.apply(Full(SID, 1, 3, "s3", "s2", 60.0, 0.0, {"a": b"1"}), 0.0)
        chunks = self.successResultOf(self.call(remote, "hand_over", SID))
        full = peer.decode_hand_over(chunks, {"s1", "s2", "s3"}, 10**6)
        self.assertEqual((full.epoch, full.version, full.primary, full.values), (2, 3, "s1", {"a": b"1"}))
        self.failureResultOf(self.call(remote, "hand_over", "Z" * 22)).trap(peer.NoSuchSession)
        self.failureResultOf(self.call(remote, "hand_over", "../etc")).trap(peer.Refused)

    def test_fenced_reply(self):
        """After a takeover, a delta from the old epoch is answered 'fenced'."""
        remote = self.logged_in()
        self.node.store.apply(Full(SID, 1, 1, "s1", "s2", 60.0, 0.0, {}), 0.0)
        self.node.store.hand_over(SID, "s3", 0.0)
        late = Delta(SID, 1, 2, "s1", "s2", {"a": b"1"}, ())
        answer = self.successResultOf(self.call(remote, "replicate", [wire.encode([late, Remove(SID, 1)])]))
        self.assertEqual(wire.decode_results(answer, 2), [Result.FENCED, Result.FENCED])
        self.assertEqual(self.node.store.get(SID).values, {})

    def test_digest(self):
        """A digest returns the sids whose copies differ."""
        remote = self.logged_in()
        self.node.store.apply(Full(SID, 1, 1, "s1", "s2", 60.0, 0.0, {}), 0.0)
        other = "O" * 22
        digest = wire.encode_digest([(SID, 1, 1), (other, 4, 1)])
        answer = self.successResultOf(self.call(remote, "digest", [digest]))
        self.assertEqual(peer.decode_sids(answer), [other])
        self.failureResultOf(self.call(remote, "digest", [b"abc"])).trap(peer.Refused)

    def test_ping_reports_load(self):
        """ping answers with how many sessions the node holds."""
        remote = self.logged_in()
        self.node.store.apply(Full(SID, 1, 1, "s1", "s2", 60.0, 0.0, {}), 0.0)
        self.assertEqual(self.successResultOf(self.call(remote, "ping")), 1)

    def test_sees(self):
        """sees answers whether this node's link to another node is up; unknown names are refused."""
        remote = self.logged_in()
        self.assertIs(self.successResultOf(self.call(remote, "sees", "s3")), False)
        self.failureResultOf(self.call(remote, "sees", "nobody")).trap(peer.Refused)

    def test_no_copyable_from_network(self):
        """An object sent as a Copyable is refused by the jelly security options."""
        remote = self.logged_in()

        class Sneaky(pb.Copyable):
            pass

        self.failureResultOf(self.call(remote, "replicate", [Sneaky()]))
        self.assertEqual(len(self.flushLoggedErrors(InsecureJelly)), 1)
        self.assertEqual(len(self.node.store), 0)

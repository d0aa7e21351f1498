"""
Replication over mutual TLS: peers with certificates from the cluster CA
link up and replicate; a peer whose certificate another CA signed does not.
"""

from __future__ import annotations

import gc
import os

from twisted.internet import defer, reactor, task
from twisted.trial.unittest import TestCase

from twisted.internet.interfaces import ISSLTransport

from appliance.config import ClusterConfig
from appliance.cookie import NO_ROUTE
from appliance.server.service import SessionServerService

from .certs import make_ca, make_leaf
from .helpers import SKIP_TLS_ON_PYPY, cluster_ini


class ReplicationTLSTests(TestCase):
    timeout = 30
    skip = SKIP_TLS_ON_PYPY

    def config(self, cert, key, ca):
        extra = f"tls_cert = {cert}\ntls_key = {key}\ntls_ca = {ca}"
        return ClusterConfig.from_string(self.text.replace("{TLS}", extra))

    def setUp(self):
        self.dir = os.path.abspath(self.mktemp())
        os.makedirs(self.dir)
        self.ca = make_ca(self.dir)
        self.text, self.ports = cluster_ini(names=("s1", "s2"), extra="{TLS}")

    def start(self, cluster, name):
        service = SessionServerService(reactor, cluster, name)
        service.startService()
        self.addCleanup(service.stopService)
        return service

    @defer.inlineCallbacks
    def wait(self, predicate, seconds=10.0):
        for _ in range(int(seconds / 0.05)):
            if predicate():
                return True
            yield task.deferLater(reactor, 0.05, lambda: None)
        return False

    @defer.inlineCallbacks
    def test_peers_link_and_replicate_over_tls(self):
        """Two nodes with CA-signed certificates link up over TLS and a new session reaches the secondary."""
        s1 = self.start(self.config(*make_leaf(self.dir, self.ca, "s1"), self.ca[2]), "s1")
        s2 = self.start(self.config(*make_leaf(self.dir, self.ca, "s2"), self.ca[2]), "s2")
        linked = yield self.wait(
            lambda: s1.links["s2"].connected and s2.links["s1"].connected and s1.quorum.may_serve()
        )
        self.assertTrue(linked, "TLS links did not come up")
        self.assertTrue(ISSLTransport.providedBy(s1.links["s2"].remote.broker.transport))
        handle = yield s1.node.open(NO_ROUTE)
        handle.data["k"] = "v"
        outcome = yield s1.node.close(handle)
        sid = outcome.cookie.split("!")[0]
        self.assertEqual(s2.node.store.get(sid).values, {"k": b'"v"'})

    @defer.inlineCallbacks
    def test_foreign_certificate_refused(self):
        """A peer whose certificate another CA signed never links up."""
        other_ca = make_ca(self.dir, "other-ca")
        s1 = self.start(self.config(*make_leaf(self.dir, self.ca, "s1"), self.ca[2]), "s1")
        intruder = self.start(self.config(*make_leaf(self.dir, other_ca, "s2"), other_ca[2]), "s2")
        linked = yield self.wait(lambda: intruder.links["s1"].connected or s1.links["s2"].connected, 2.0)
        self.assertFalse(linked)
        # A refused handshake ends the link's attempt cleanly: no error is
        # left in a Deferred (closing a lost TLS connection again raises).
        # Imported here: on PyPy, without OpenSSL, the module must load to say why it skips.
        from OpenSSL import SSL

        gc.collect()
        self.assertEqual([f.getErrorMessage() for f in self.flushLoggedErrors() if not f.check(SSL.Error)], [])

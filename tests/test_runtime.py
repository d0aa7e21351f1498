"""
What an interpreter without TLS refuses at startup, and which tests say why
they do not run where TLS is missing.
"""

from __future__ import annotations

import os
import subprocess
import sys

from twisted.trial.unittest import SynchronousTestCase

from appliance import runtime
from appliance.config import ClusterConfig, ConfigError

from . import helpers
from .helpers import ROOT, cluster_ini, free_ports, twistd, write

TLS_BALANCER = "\n[balancer:lb1]\nlisten = 127.0.0.1:{port}\nhttps = 127.0.0.1:{https}\ntls_cert = lb.pem\ntls_key = lb.key\n"


def no_tls(name: str):
    raise ImportError(f"No module named {name!r}")


class TlsMissingTests(SynchronousTestCase):
    def cluster(self, extra: str = "", balancer: str = "") -> ClusterConfig:
        text, _ = cluster_ini(names=("s1",), extra=extra, balancer=balancer)
        return ClusterConfig.from_string(text, "c.ini")

    def test_reason_names_what_is_missing(self):
        """Without pyOpenSSL the reason names both packages, the interpreter and the import error."""
        reason = runtime.tls_missing(no_tls)
        self.assertIn("TLS needs pyOpenSSL and cryptography", reason)
        self.assertIn(sys.version.split()[0], reason)
        self.assertIn("'OpenSSL.SSL'", reason)

    def test_present(self):
        """Where both import, nothing is missing."""
        self.assertIsNone(runtime.tls_missing(lambda name: None))

    def test_https_refused_without_tls(self):
        """A balancer's https address is refused with one line naming its section and key when TLS is missing."""
        https, port = free_ports(2)
        cluster = self.cluster(balancer=TLS_BALANCER.format(port=port, https=https))
        e = self.assertRaises(ConfigError, runtime.check_tls, cluster, no_tls)
        self.assertTrue(str(e).startswith("c.ini: [balancer:lb1] https: TLS needs pyOpenSSL"), str(e))
        self.assertNotIn("\n", str(e))

    def test_replication_tls_refused_without_tls(self):
        """Replication TLS is refused naming [cluster] tls_cert when TLS is missing."""
        cluster = self.cluster(extra="tls_cert = a.pem\ntls_key = a.key\ntls_ca = ca.pem")
        e = self.assertRaises(ConfigError, runtime.check_tls, cluster, no_tls)
        self.assertTrue(str(e).startswith("c.ini: [cluster] tls_cert: TLS needs"), str(e))

    def test_no_tls_configured(self):
        """A cluster without TLS starts whatever the interpreter lacks."""
        runtime.check_tls(self.cluster(), no_tls)

    def test_startup_refused_by_twistd(self):
        """A real twistd whose interpreter cannot import OpenSSL stops with one line and exit status 1, no traceback."""
        https, port = free_ports(2)
        text, _ = cluster_ini(names=("s1",), balancer=TLS_BALANCER.format(port=port, https=https) + "node = s1\n")
        path = write(os.path.abspath(self.mktemp() + ".ini"), text)
        shadow = os.path.abspath(self.mktemp())
        os.makedirs(os.path.join(shadow, "OpenSSL"))
        write(os.path.join(shadow, "OpenSSL", "__init__.py"), "raise ImportError('no OpenSSL for this test')\n")
        env = dict(os.environ, PYTHONPATH=shadow)
        done = subprocess.run(twistd("--config", path, "--node", "s1", "--roles", "balancer"), cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=60)
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        self.assertEqual(done.returncode, 1, done.stdout + done.stderr)
        self.assertNotIn("Traceback", done.stdout + done.stderr)
        self.assertEqual(len(lines), 1, lines)
        self.assertTrue(lines[0].startswith(f"appliance: {path}: [balancer:lb1] https: TLS needs pyOpenSSL"), lines)


class TlsTestsTests(SynchronousTestCase):
    def test_tls_tests_skip_on_pypy_only(self):
        """The TLS tests skip on PyPy, saying why; on CPython they run, and a missing TLS extra fails here."""
        if runtime.PYPY:
            self.assertIn("PyPy", helpers.SKIP_TLS_ON_PYPY)
            self.assertIn("cryptography", helpers.SKIP_TLS_ON_PYPY)
        else:
            self.assertIsNone(helpers.SKIP_TLS_ON_PYPY)
            self.assertIsNone(runtime.tls_missing())

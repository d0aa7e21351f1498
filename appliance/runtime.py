"""
What this interpreter can run.

TLS (HTTPS on a balancer, mutual TLS between peers) needs pyOpenSSL and
cryptography, the C{tls} extra; cryptography has no PyPy build without a
Rust toolchain, so on PyPy the appliance runs without it and a configured
TLS key stops startup with one line instead of an import traceback.
"""

from __future__ import annotations

import importlib
import platform
from typing import Callable, Optional, Tuple

from appliance.config import ClusterConfig, ConfigError

PYPY = platform.python_implementation() == "PyPy"


def tls_missing(import_module: Callable = importlib.import_module) -> Optional[str]:
    """
    Why this interpreter cannot do TLS, or C{None} when it can.
    """
    try:
        import_module("OpenSSL.SSL")
        import_module("cryptography.x509")
    except ImportError as e:
        where = f"{platform.python_implementation()} {platform.python_version()}"
        hint = "cryptography has no PyPy build here" if PYPY else "pip install 'appliance[tls]'"
        return f"TLS needs pyOpenSSL and cryptography, not importable on {where} ({hint}; {e})"
    return None


def tls_setting(cluster: ClusterConfig) -> Optional[Tuple[str, str]]:
    """
    (section, key) of the first TLS setting this cluster configures, or
    C{None} when it configures none.
    """
    if cluster.cluster.tls:
        return "cluster", "tls_cert"
    for b in cluster.balancers:
        if b.https is not None:
            return f"balancer:{b.name}", "https"
    return None


def check_tls(cluster: ClusterConfig, import_module: Callable = importlib.import_module) -> None:
    """
    Raise the L{ConfigError} naming the first TLS setting when this
    interpreter cannot do TLS.
    """
    setting = tls_setting(cluster)
    if setting is not None:
        missing = tls_missing(import_module)
        if missing is not None:
            raise ConfigError(cluster.path, *setting, missing)

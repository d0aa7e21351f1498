"""
What this interpreter can run, and the interpreter the processes this one
starts run under (C{[cluster] runtime}).

TLS (HTTPS on a balancer, mutual TLS between peers) needs pyOpenSSL and
cryptography, the C{tls} extra; cryptography has no PyPy build without a
Rust toolchain, so on PyPy the appliance runs without it and a configured
TLS key stops startup with one line instead of an import traceback.
"""

from __future__ import annotations

import importlib
import os
import platform
import shutil
import subprocess
import sys
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


#: PyPy's collector settings for every process this one starts, each unless
#: the operator set it (CPython ignores them):
#:
#: - the incremental collector marks this much per step (its default,
#:   twice the nursery, made steps of ~6 ms in a balancer here: the p99
#:   added at half load was 8-12 ms; with 128KB, 0.4-1.1 ms, at the same
#:   rate). The collector keeps its own floor, so a step still reclaims
#:   what each minor collection leaves;
#: - the nursery, where new objects live until a minor collection, is 16MB
#:   instead of the 1MB PyPy sizes from the CPU's cache here. A session
#:   server in sync replication holds every request until its secondary
#:   answers, so a small nursery filled while they waited and each minor
#:   collection copied all of them to the old generation, where the major
#:   collector then reclaimed them: sync on PyPy served 0.55 x no
#:   replication, 1.02 x with 16MB (C{bench/replication.py}, the README's
#:   Benchmarks). The balancer's throughput and p99 did not change.
PYPY_GC = (("PYPY_GC_INCREMENT_STEP", "128KB"), ("PYPY_GC_NURSERY", "16MB"))


def child_environment(environ) -> dict:
    """
    The environment of a process this one starts: this one's, with
    L{PYPY_GC}'s settings where it has none of its own.
    """
    env = dict(environ)
    for key, value in PYPY_GC:
        env.setdefault(key, value)
    return env


def interpreter(cluster: ClusterConfig) -> str:
    """
    The executable the processes started by this one run under: C{[cluster]
    runtime} (a command found on C{PATH}, or a path; C{~} is the home
    directory), else this one.
    """
    runtime = cluster.cluster.runtime
    if runtime is None:
        return sys.executable
    found = shutil.which(os.path.expanduser(runtime))
    if found is None:
        raise ConfigError(cluster.path, "cluster", "runtime", f"no such interpreter: {runtime}")
    return os.path.abspath(found)


def check_runtime(cluster: ClusterConfig, cwd: Optional[str] = None) -> None:
    """
    Raise the L{ConfigError} of C{[cluster] runtime} when it names no
    interpreter that runs the appliance (from C{cwd}, where the children
    start: this process's working directory by default), or one that
    cannot do the TLS this cluster configures.
    """
    if cluster.cluster.runtime is None:
        return
    executable = interpreter(cluster)
    probe = "from appliance.runtime import tls_missing; print(tls_missing() or '')"
    try:
        done = subprocess.run([executable, "-c", probe], cwd=cwd, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise ConfigError(cluster.path, "cluster", "runtime", f"{executable} does not run: {e}") from None
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise ConfigError(cluster.path, "cluster", "runtime", f"{executable} cannot run the appliance: {last}")
    missing = done.stdout.strip()
    setting = tls_setting(cluster)
    if missing and setting is not None:
        raise ConfigError(cluster.path, *setting, f"runtime {cluster.cluster.runtime}: {missing}")

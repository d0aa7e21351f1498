from setuptools import setup

FLASK = ["flask>=2.3"]
DJANGO = ["django>=4.2"]
PYRAMID = ["pyramid>=2.0"]

setup(
    name="appliance",
    version="0.1.0",
    description="Web sessions that survive server death: session replication on Twisted",
    python_requires=">=3.9",
    packages=[
        "appliance",
        "appliance.core",
        "appliance.replication",
        "appliance.server",
        "appliance.balancer",
        "appliance.dns",
        "appliance.demo",
        "appliance.integrations",
        "appliance.testing",
        "appliance.client",
        "appliance.admin",
        "twisted.plugins",
    ],
    package_data={"twisted": ["plugins/appliance_plugin.py"]},
    install_requires=[
        "twisted>=23.10",
        "attrs>=22.2",
        "dnslib>=0.9.23",
        "prometheus_client>=0.17",
    ],
    extras_require={
        # TLS (HTTPS on a balancer, mutual TLS between peers) needs
        # cryptography, which has no build for PyPy without a Rust toolchain:
        # optional, so that `pip install .` works on PyPy as it is.
        "tls": ["twisted[tls]>=23.10", "pyopenssl>=23"],
        # The framework adapters (appliance.integrations); pure Python, so
        # they install on PyPy too (pip picks the newest release that
        # supports the interpreter: Django 4.2 on Python 3.9).
        "flask": FLASK,
        "django": DJANGO,
        "pyramid": PYRAMID,
        # hypothesis: property tests of the session rules; dnspython: an
        # independent resolver for the DNS end-to-end test; redis: the
        # benchmark's central-store baseline; the frameworks: the adapters'
        # tests and examples; websocket-client: the browser test drives
        # headless Chromium over the DevTools protocol.  (No treq: it
        # requires twisted[tls].)
        "test": ["hypothesis>=6", "dnspython>=2.3", "redis>=4", "websocket-client>=1.6"] + FLASK + DJANGO + PYRAMID,
    },
)

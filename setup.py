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
        "twisted.plugins",
    ],
    package_data={"twisted": ["plugins/appliance_plugin.py"]},
    install_requires=[
        "twisted[tls]>=23.10",
        "attrs>=22.2",
        "dnslib>=0.9.23",
        "pyopenssl>=23",
    ],
    extras_require={
        # The framework adapters (appliance.integrations); pure Python, so
        # they install on PyPy too (pip picks the newest release that
        # supports the interpreter: Django 4.2 on Python 3.9).
        "flask": FLASK,
        "django": DJANGO,
        "pyramid": PYRAMID,
        # hypothesis: property tests of the session rules; dnspython: an
        # independent resolver for the DNS end-to-end test; treq: StubTreq for
        # resource trees; redis: the benchmark's central-store baseline; the
        # frameworks: the adapters' tests and examples.
        "test": ["hypothesis>=6", "dnspython>=2.3", "treq>=23", "redis>=4"] + FLASK + DJANGO + PYRAMID,
    },
)

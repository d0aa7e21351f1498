"""
TLS for replication links: every node presents a certificate signed by the
cluster CA and accepts only peers that do the same (mutual TLS, TLS 1.2+).
"""

from __future__ import annotations

from twisted.internet import ssl

from appliance.config import ClusterSettings


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def _identity(settings: ClusterSettings):
    own = ssl.PrivateCertificate.loadPEM(_read(settings.tls_cert) + b"\n" + _read(settings.tls_key))
    ca = ssl.Certificate.loadPEM(_read(settings.tls_ca))
    return own, ca


def server_options(settings: ClusterSettings):
    own, ca = _identity(settings)
    return ssl.CertificateOptions(
        privateKey=own.privateKey.original,
        certificate=own.original,
        verify=True,
        caCerts=[ca.original],
        requireCertificate=True,
        raiseMinimumTo=ssl.TLSVersion.TLSv1_2,
    )


def client_options(settings: ClusterSettings, host: str):
    own, ca = _identity(settings)
    return ssl.optionsForClientTLS(
        host, trustRoot=ca, clientCertificate=own, extraCertificateOptions={"raiseMinimumTo": ssl.TLSVersion.TLSv1_2}
    )

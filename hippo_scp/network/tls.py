"""DICOM TLS (PS3.15 Annex B) contexts for the SCP and the result sender.

Built from the ``tls`` section once at start-up, so a missing or unreadable certificate stops
the node with one line instead of failing the first association.
"""

from __future__ import annotations

import ssl

from hippo_scp.config import TLSSection


def server_context(tls: TLSSection) -> ssl.SSLContext | None:
    """The listening side: our certificate; client certificates checked when required."""
    if not tls.enabled:
        return None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(str(tls.certificate), str(tls.private_key))
    if tls.ca_certificates is not None:
        context.load_verify_locations(cafile=str(tls.ca_certificates))
    context.verify_mode = ssl.CERT_REQUIRED if tls.require_client_certificate else ssl.CERT_NONE
    return context


def client_context(tls: TLSSection) -> ssl.SSLContext:
    """The sending side (destinations with ``tls: true``): verify the PACS certificate against
    ``tls.ca_certificates`` (or the system store) and present ours when configured."""
    context = ssl.create_default_context(
        ssl.Purpose.SERVER_AUTH,
        cafile=str(tls.ca_certificates) if tls.ca_certificates is not None else None,
    )
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if tls.certificate is not None and tls.private_key is not None:
        context.load_cert_chain(str(tls.certificate), str(tls.private_key))
    return context

"""The activities of the shipped workflows, registered on import.

One module per concern: approvals (shared by issuance and revocation),
certificates (issuance), revocation, crl, personalization (smartcards).  Each activity gets an
:class:`~openxpki_py.workflow.context.ActivityContext` whose ``services``
is the instance's :class:`~openxpki_py.services.Services` (``.ca``, ``.config``).
"""

from __future__ import annotations

from . import approval, certificates, crl, personalization, revocation

__all__ = ["approval", "certificates", "crl", "personalization", "revocation"]

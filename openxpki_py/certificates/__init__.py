"""Certificates as workflows: issuance (with RA approval), revocation, CRLs.

The definitions are ``workflows/*.yaml``; their callables are ``approval``
(four eyes, shared by issuance and revocation), ``issuance``,
``revocation`` and ``crl``.  Each activity gets an
:class:`~openxpki_py.workflow.context.ActivityContext`; ``pki(ctx)``
(:mod:`openxpki_py.services`) is its typed view of the instance (``.ca``,
``.directory``, ``.config``).  ``domain.DOMAIN`` hands all of it to the
engine.
"""

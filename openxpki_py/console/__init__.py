"""The operators' console: what a help desk and a CA operator do every day.

The services here are shared by three front ends: the web pages
(``openxpki_py/web/console/``), the command line (``openxpki-py ca …``,
``console …``) and the JSON variant of the pages.  None of them revokes,
signs or retries by itself: each calls the CA (:mod:`openxpki_py.crypto.ca`),
the token registry or the workflow engine, so there is one implementation of
every operation, checked for the role and audited in one place.

``roles`` says who may do what; ``revocation`` revokes, holds and issues
CRLs; ``search`` finds people, cards, certificates and workflows;
``stuck`` is the queue of workflows that need an operator; ``auditlog``
searches and exports the audit trail.
"""

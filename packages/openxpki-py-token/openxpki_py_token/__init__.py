"""The token agent, ``openxpki-py-token``: the user's PC side of personalization.

It reads the smartcard through PKCS#11, trades the enrollment code from the
web page for a short-lived access token and then does what the server's
``GET /api/v1/task`` says: generate a key on the card, sign a CSR with it on
the card, write the issued certificate next to the key.  The contract is the
server's ``docs/api.md``.

This distribution is installed on users' PCs and depends only on
cryptography and python-pkcs11.  The server depends on it for the parts both
sides share — never the other way round:

- ``errors`` (the base error classes and the token errors), ``secret``
  (where a PIN is read from), ``keyspec`` (key kinds), ``pkcs11/`` (loading a
  module safely for threads and forks, sessions and login, key objects that
  cryptography can sign with, public keys).

The agent itself: ``cli`` (arguments, exit codes), ``enroll`` (the task
loop), ``api_client`` (HTTPS, standard library only), ``card`` (PKCS#11 on
the user's card; ``card_login``, ``card_objects``), ``piv_card`` and ``piv_objects``
(PIV cards over PC/SC), ``opensc`` (where the card's module is on this computer),
``tokens`` (finding the card among the slots), ``card_profiles`` (what
differs between cards), ``pins``, ``state`` (resuming after an
interruption), ``progress``.
"""

from __future__ import annotations

__version__ = "0.1.0"

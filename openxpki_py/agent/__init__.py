"""The token agent, ``openxpki-py-token``: the user's PC side of personalization.

It reads the smartcard through PKCS#11, trades the enrollment code from the
web page for a short-lived access token and then does what the server's
``GET /api/v1/task`` says: generate a key on the card, sign a CSR with it on
the card, write the issued certificate next to the key.  The contract is
``docs/api.md``.

Modules: ``cli`` (arguments, exit codes), ``enroll`` (the task loop),
``api_client`` (HTTPS, standard library only), ``card`` (PKCS#11 on the
user's card), ``tokens`` (finding the card among the slots),
``card_profiles`` (what differs between cards), ``pins``, ``state``
(resuming after an interruption), ``errors``, ``progress``.
"""

from __future__ import annotations

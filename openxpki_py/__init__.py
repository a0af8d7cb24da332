"""openxpki-py: a self-service smartcard PKI.

Folders name the concepts: ``config`` (instance configuration), ``db`` (SQL
store), ``crypto`` (key backends, CSR checks, profiles, the CA), ``directory``
(user data), ``auth`` (SSO identity and roles), ``workflow`` (the engine and
its definitions), ``web`` (the WSGI application) and ``agent`` (the token
agent that runs next to the card).
"""

__version__ = "0.1.0"

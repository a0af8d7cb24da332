"""SmartCard personalization: what a card gets (``policy``), which cards are
known (``tokens``), how the token agent is let in (``enrollment``) and what
it is asked to do next (``tasks``).  The workflow itself is
``workflows/smartcard_personalization.yaml`` with its callables in
``activities``; ``domain.DOMAIN`` hands both (and the purge of expired
enrollment codes) to the engine.  The agent's HTTP side is ``web/api.py``.
"""

"""SmartCard personalization: what a card gets (``policy``), which cards are
known (``tokens``), how the token agent is let in (``enrollment``) and what
it is asked to do next (``tasks``).  The workflow itself is
``workflow/defs/smartcard_personalization.yaml`` with its activities in
``workflow/activities/personalization.py``; the agent's HTTP side is
``web/api.py``.
"""

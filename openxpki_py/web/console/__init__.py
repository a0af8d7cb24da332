"""The operators' console pages (``/console/…``), over the services in :mod:`openxpki_py.console`.

Every page is for the operator roles only, and every change is a
CSRF-checked POST the services audit.  Each page also answers JSON when
asked for it (``Accept: application/json`` or ``?format=json``): scripts
use the same URLs, the same session and the same CSRF token (header
``X-CSRF-Token``; ``GET /console`` tells it).
"""

from __future__ import annotations

from . import home as _home  # noqa: F401 - registers its views
from . import revocation as _revocation  # noqa: F401 - registers its views
from . import search as _search  # noqa: F401 - registers its views
from . import stuck as _stuck  # noqa: F401 - registers its views
from . import audit as _audit  # noqa: F401 - registers its views
from . import cards as _cards  # noqa: F401 - registers its views
from . import escrow as _escrow  # noqa: F401 - registers its views

"""The SQL store: table definitions (:mod:`.schema`) and engines (:mod:`.engine`)."""

"""Key escrow: encryption keys made on the server, kept wrapped under an HSM key, imported onto the card,
released again only with two Key Recovery Officers' approval (docs/key-escrow.md)."""

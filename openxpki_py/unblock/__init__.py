"""PIN unblock: a card's blocked user PIN reset with the card's admin credential (the ``pin_unblock`` workflow).

The card's owner asks on "My certificates", or an RA/CA Operator starts it
for them on the console's card page; the owner runs the token agent, which
receives the credential the server derives in its HSM
(:mod:`openxpki_py.crypto.card_admin`) once, for that card, and sets the new
PIN the owner typed into it.  See docs/cards.md.
"""

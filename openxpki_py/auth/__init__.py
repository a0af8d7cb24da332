"""Who is asking, and in which role.

``identity`` reads the SSO user from the web server's environ (never from
request headers unless a trusted header is configured), ``handlers`` runs
the configured external command that grants or refuses a role, and
``sessions`` keeps the chosen role in the SQL store, bound to the SSO user.
"""

"""Cryptography of the CA: key backends (``keys``), CSR checks, profiles,
certificate and CRL issuance.
"""

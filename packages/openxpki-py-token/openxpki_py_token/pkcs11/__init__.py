"""PKCS#11 for both sides: the CA's HSM on the server and the user's card in the agent.

``module`` loads a library once per process (OS locking, fork-safe, counted
sessions), ``session`` logs in and pools sessions, ``keys`` are private key
objects that cryptography's builders sign with, ``public_keys`` turns a
token's key objects into cryptography public keys.
"""

"""Synq relay: persistent addresses, signed envelopes, inboxes and store-and-forward federation."""

__version__ = "0.1.0"

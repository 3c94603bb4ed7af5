"""Outcome events: every final outcome of an image and every later change to it, as rows.

An event is written by `emit` in the same transaction as the change it reports (a transactional
outbox), so it exists exactly when the change does. The decisions feed (`feed.py`) reads them in a
stable order, and webhook deliveries fan out from them.
"""

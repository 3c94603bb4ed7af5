"""Signed webhooks: every outcome event, delivered to the endpoints admins register.

A transactional outbox: a `post_save` receiver on `Event` (apps.py, fanout.py) writes one
`Delivery` per subscribed endpoint in the transaction that writes the event, so a committed
change always has its deliveries and a rolled-back one has none. `manage.py deliver_webhooks`
(worker.py) claims due deliveries with a lease, sends them signed as Standard Webhooks says
(signing.py) through the one outbound module (transport.py), records every attempt, and retries
on a schedule of a little over a day. Endpoint secrets are never stored: each is derived from
WEBHOOK_SECRET_KEY and a per-endpoint salt.
"""

"""Response-time targets (SLAs): how long an item may wait for a person, per category.

An item is due `minutes` after it entered the queue (its status_changed_at while it awaits
review); the tightest target among its categories applies, else the default row (category "").
"""

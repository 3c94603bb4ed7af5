"""Signals moderation sends and other apps receive (reviews records reveals): never the reverse."""

from django.dispatch import Signal

# Clear pixels of an image were served to a person: image, user, variant ("preview", "thumbnail"
# or "original"). Sent before the bytes go out; a receiver that fails stops them (no unrecorded
# exposure). reviews records each one as a Reveal.
pixels_served = Signal()

# IMM's verdict (or a routing rule) settled an image with no person involved: image (locked, its
# status the new one), suggestion ("pass" or "block") and categories. Sent inside the result's
# transaction, after the image moved; receivers must be quick and must not fail the result
# (reviews.qa samples a share of these for people to check, with one INSERT).
auto_settled = Signal()

# IMM's verdict routed an image (its status and categories are set): image. Sent in the
# transaction that routed it, so what receivers write commits or rolls back with it. reviews
# keeps each waiting image's due time (reviews.sla.due).
review_routed = Signal()

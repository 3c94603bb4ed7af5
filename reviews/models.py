# The review queue is read from moderation.Image's status; claims and decisions arrive with the
# reviewer queue issue.

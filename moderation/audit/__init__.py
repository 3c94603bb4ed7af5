"""The audit log: recording (log), its pages (views, urls) and the chain walk task (tasks)."""

"""Delivery: the per-message pipe client and the long-running service it hands mail to."""

"""Data lifecycle (issue 16): purging expired messages with their objects, deleting an org,
and checking that every object the database names is in the bucket (after a restore).

docs/operations.md, "Backups and restore" and "Retention and deletion", is the operator's side.
"""

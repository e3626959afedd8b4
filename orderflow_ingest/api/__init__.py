"""The HTTP API (`orderflow-ingest api`): messages, signed download links, reprocess, the event
feed, keys and webhook endpoints, all under /v1 and scoped to the calling key's orgs.
See docs/api.md."""

"""Signed webhooks (Standard Webhooks): endpoints per org, a dispatcher that fans the event log
out into deliveries and delivers them at least once, and a guard against SSRF.

Modules: signing (secrets, signatures), ssrf (which addresses a receiver may have), schedule
(retry delays, Retry-After), http (one bounded attempt to a vetted address), payload (the thin
body), endpoints (the management API the HTTP API and CLI mount), fanout and delivery (the
dispatcher's two halves), dispatcher (the long-running loop), command (CLI). docs/webhooks.md
is the receiver's and operator's guide.
"""

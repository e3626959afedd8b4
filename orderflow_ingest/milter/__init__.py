"""The milter daemon: RCPT org check, SPF, DKIM, DMARC, Authentication-Results."""

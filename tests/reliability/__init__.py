"""The full reliability suite (issue 7); see README.md here."""

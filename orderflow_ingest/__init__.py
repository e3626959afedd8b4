"""orderflow-ingest: purchase orders by email, from Postfix to documents."""

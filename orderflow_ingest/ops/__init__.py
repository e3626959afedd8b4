"""Operating orderflow-ingest: the operator CLI (reprocess, sweep, show, queue, doctor), the
Prometheus exporter and its alert rules.

One module per command family; `commands.py` registers them on the CLI. Nothing here is
imported by milter/, pipe/ or jobs/: operations read what those parts record (rows, RQ jobs,
the metrics hash, Postfix's queue and log) and act only through the shared modules.
"""

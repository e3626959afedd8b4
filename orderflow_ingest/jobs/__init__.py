"""RQ jobs: MIME walking, attachment rules, document rows, hand-off to extraction."""

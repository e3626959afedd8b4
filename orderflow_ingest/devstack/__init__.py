"""A throwaway local stack (PostgreSQL, Redis, S3, Postfix) for the demo, tests and benches."""

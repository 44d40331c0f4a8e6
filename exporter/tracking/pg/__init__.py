"""The shared state of several replicas in PostgreSQL: the database is the source of truth."""

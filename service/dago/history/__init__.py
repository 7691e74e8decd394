"""Long-term run history in PostgreSQL (``DAGO_POSTGRES_URL``): the schema and its
migrations, the archiver that moves finished runs out of Redis, and the reads that answer
for runs Redis no longer holds. Without a URL nothing here runs. See docs/history.md."""

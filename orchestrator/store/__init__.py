"""PostgreSQL adapter: pool, migrations, queries."""

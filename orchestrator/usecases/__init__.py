"""The operator's use cases, one way in: the CLI and the ops API both call these, with a
database connection, and neither runs SQL of its own."""

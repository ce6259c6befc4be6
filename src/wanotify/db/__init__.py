"""Database access: the engine, the one module of dialect differences, and migrations."""

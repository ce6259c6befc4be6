"""Who is calling: built-in users and passwords, JWTs, org API keys, roles."""

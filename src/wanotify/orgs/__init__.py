"""Tenants: creating customer orgs and their owners (with the trial welcome), the dashboard
stats and the audit log view."""

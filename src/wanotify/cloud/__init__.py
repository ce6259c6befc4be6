"""Meta WhatsApp Cloud API accounts: per-org credentials and the signed webhook."""

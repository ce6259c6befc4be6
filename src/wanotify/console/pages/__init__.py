"""One module per console page group, each with its own router."""

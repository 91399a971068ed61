"""The HTTP service: one FastAPI process that owns the stack; the page and the CLI are its clients."""

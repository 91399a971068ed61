"""Code that runs inside Triton's python backend (imported by the ``model.py`` shims export writes)."""

"""Outside systems that hold data: Qdrant (vectors) and MongoDB (metadata, events)."""

"""avfuse fusion."""

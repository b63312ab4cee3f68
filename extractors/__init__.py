"""avfuse extractors."""

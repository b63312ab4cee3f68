"""avfuse data_manifests."""

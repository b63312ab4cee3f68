"""Face backbones (each module registers its own on import) and their shared input checks."""

__all__: list[str] = []

"""Audio backbones (each module registers its own on import) and their torch front-ends."""

__all__: list[str] = []

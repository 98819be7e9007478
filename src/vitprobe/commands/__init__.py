"""CLI commands beyond explain: each module defines ``register(app)`` and imports heavy extras lazily."""

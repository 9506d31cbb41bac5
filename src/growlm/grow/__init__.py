"""Growth operators: pure functions (state, old config, new config, spec) → (state, provenance)."""


def check_growth(old, new, spec, where: str = "grow") -> None:
    """Raise GrowlmError if `spec` cannot take a model of shape `old` to `new`."""
    return None

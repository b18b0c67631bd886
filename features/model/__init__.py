"""The backbone models, their weights and the compute device."""

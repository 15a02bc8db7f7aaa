"""random layer (see DESIGN.md)."""

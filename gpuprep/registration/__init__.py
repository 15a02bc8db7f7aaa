"""registration layer (see DESIGN.md)."""

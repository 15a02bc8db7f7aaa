"""registration layer (see docs/design.md)."""

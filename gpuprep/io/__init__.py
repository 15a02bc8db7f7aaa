"""Reading and writing images with their world coordinates, and sidecars."""

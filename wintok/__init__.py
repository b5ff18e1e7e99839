"""wintok."""

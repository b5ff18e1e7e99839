"""wintok/teachers."""

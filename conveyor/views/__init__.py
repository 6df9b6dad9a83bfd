"""Views: the explorer page, static figures and trace export (no torch needed)."""

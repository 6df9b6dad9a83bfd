"""Views of schedules and timelines: terminal, figures, the explorer page, traces."""

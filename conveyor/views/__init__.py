"""Views of schedules and timelines: terminal Gantt, the explorer page, static figures
and trace export. Nothing here needs torch; matplotlib is imported only to plot."""

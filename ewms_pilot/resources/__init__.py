"""What the pilot may use (its slot) and how it splits that between tasks."""

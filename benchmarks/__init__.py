"""Side-by-side benchmark of this pilot against ewms-pilot 1.0.5 (`python -m benchmarks.compare`)."""

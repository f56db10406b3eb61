"""Running a MOSIX process away from home: what its calls carry, and its home half (the deputy)."""

"""``mosrun``: running programs under MOSIX (its command line, supervisor and rules)."""

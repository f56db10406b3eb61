"""Process images: capture, the image stream, restore (checkpoint, freezing, migration)."""

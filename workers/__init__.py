"""The job runtime: how any job executes. The bottom layer; imports nothing of ours above it."""

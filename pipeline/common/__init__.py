"""The leaf layer: errors a user can fix, atomic outputs, child processes. Imports nothing of this project."""

"""The job control plane: commands, scheduler, worker processes, result cache (see app.py)."""

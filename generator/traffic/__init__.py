"""Traffic: access profiles (per-row counts), request shapes and request generators shaped like real traffic."""

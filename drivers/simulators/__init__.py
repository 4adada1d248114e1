"""Terminal-side simulators that speak the real bytes on a pty."""

"""What managers watch: alerts, the day report, metrics, systemd, log redaction."""

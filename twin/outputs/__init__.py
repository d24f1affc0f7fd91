"""What a run writes, the same for both engines: records, metrics, plots and the run files."""

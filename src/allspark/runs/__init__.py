"""The run folder and everything written into it: its file names (folder), atomic writes (atomic), our weights
file format (weights_file), the checkpoint pair and the EMA teacher's weights (checkpoints), the lock (lock), the
saved config (run_config), train.log (logs) and metrics.jsonl (metrics). Everything else asks these modules."""

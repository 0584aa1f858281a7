"""Quality evaluation: turntable renders and the paper's metrics."""

"""The GPU check's measurements, one module per section; ``bench/gpu_check.py`` is the driver."""

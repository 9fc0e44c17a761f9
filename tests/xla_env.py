"""XLA_FLAGS for test subprocesses that need N fake CPU devices: the flags this test process runs
with (e.g. conftest's optimisation level) plus the device count."""
import os


def fake_devices(n: int) -> str:
    """os.environ's XLA_FLAGS + `--xla_force_host_platform_device_count=n` (for a subprocess env)."""
    return (os.environ.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={n}").strip()

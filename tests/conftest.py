"""Test configuration: 8 fake CPU devices for the multi-device tests.

XLA reads ``XLA_FLAGS`` when the backend starts, so the flag is set here, at
import time: pytest imports this file before the test modules, and no test
touches a device before that. Single-device tests are unaffected: unsharded
arrays live on the first device.
"""

import os

_DEVICE_COUNT_FLAG = "--xla_force_host_platform_device_count"

if _DEVICE_COUNT_FLAG not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + f" {_DEVICE_COUNT_FLAG}=8").strip()

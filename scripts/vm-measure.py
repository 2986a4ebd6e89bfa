"""Boot one test VM and print how long each stage took and the disk it used.

Run as root from the repository root: ``python scripts/vm-measure.py``. The
figures depend on the host's cores and on any other VM running at the time,
so the output also lists the other qemu processes seen at the start.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from provider import qemu, vmimage  # noqa: E402
from tests.harness.vm import TestVM  # noqa: E402


def allocated_mib(path: Path) -> float:
    """Return the disk space that ``path`` occupies, in MiB."""
    return path.stat().st_blocks * 512 / 1024**2


def other_qemu_processes() -> int:
    """Return how many qemu-system-x86_64 processes are running, zombies excluded."""
    count = 0
    for stat_file in Path("/proc").glob("[0-9]*/stat"):
        try:
            stat = stat_file.read_text()
        except OSError:
            continue
        name = stat[stat.find("(") + 1 : stat.rfind(")")]
        state = stat[stat.rfind(")") + 2]
        if name.startswith("qemu-system-x86") and state != "Z":
            count += 1
    return count


def main() -> None:
    """Measure image lookup, boot to SSH and Docker, overlay size and stop."""
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    figures: dict[str, object] = {"other_qemu_processes": other_qemu_processes()}

    started = time.monotonic()
    image = vmimage.ensure_image()
    figures["image_lookup_s"] = round(time.monotonic() - started, 2)
    figures["image_allocated_mib"] = round(allocated_mib(image.path))
    figures["image_apparent_mib"] = image.path.stat().st_size // 1024**2

    with TestVM(image=image) as vm:
        disk = vm.machine_dir / qemu.DISK_NAME
        figures["overlay_after_boot_mib"] = round(allocated_mib(disk), 1)
    figures.update({f"{stage}_s": round(t, 1) for stage, t in vm.timings.items()})
    print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()

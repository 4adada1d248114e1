"""The daemon of ``bench/day.py``: ``edged run`` with a wall clock the bench moves forward.

Runs ``edged.app.serve`` (the same daemon as ``python -m edged run``) on a clock whose
monotonic time and sleeps are real (breakers, limiters and timeouts behave as in a store)
and whose wall time is real time plus an offset read from a file the bench rewrites: the
sales of a store day land over 24 simulated hours, so the ages on the status page and the
offline payments' ages are a day's, while the drain afterwards runs in real time.

Started by the bench as ``python bench/day_daemon.py OFFSET_FILE <python> -m edged run
--data-dir D --listen H:P --config F`` (the tail is what ``tests/daemon_process.py``
appends). Bench-only: the product has no such clock.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from edged import event_loop  # noqa: E402
from edged.app import serve  # noqa: E402
from edged.config import load, with_overrides  # noqa: E402
from sync.core.clock import SystemClock  # noqa: E402


class SteppedClock(SystemClock):
    """Real monotonic time; wall time shifted by the offset (seconds) in ``path``."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._offset = 0.0
        self._read_at = -1.0

    def now(self) -> datetime:
        mono = time.monotonic()
        if mono - self._read_at > 0.2:
            self._read_at = mono
            try:
                self._offset = float(self._path.read_text().strip() or 0)
            except (OSError, ValueError):
                pass
        return datetime.now(UTC) + timedelta(seconds=self._offset)


def main() -> int:
    offset_file = Path(sys.argv[1])
    args = sys.argv[sys.argv.index("run") + 1:]
    opts = dict(zip(args[::2], args[1::2], strict=False))
    cfg = with_overrides(load(opts.get("--config")), data_dir=opts.get("--data-dir"),
                         listen=opts.get("--listen"))
    logging.basicConfig(level=cfg.log_level,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return event_loop.run(serve(cfg, SteppedClock(offset_file)), os.environ)


if __name__ == "__main__":
    sys.exit(main())



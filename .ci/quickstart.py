"""Print the two lines of README.md's first ```bash block; fail loudly if it is not two lines."""

from __future__ import annotations

import re
import sys
from pathlib import Path


def quickstart_lines(readme: str) -> list[str]:
    match = re.search(r"```bash\n(.*?)```", readme, flags=re.DOTALL)
    if match is None:
        raise SystemExit("README.md has no ```bash block")
    lines = [ln.strip() for ln in match.group(1).splitlines() if ln.strip()]
    if len(lines) != 2:
        raise SystemExit(f"README.md's first bash block must hold exactly 2 lines, got {lines}")
    return lines


if __name__ == "__main__":
    for line in quickstart_lines(Path(sys.argv[1]).read_text()):
        print(line)

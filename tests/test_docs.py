"""The documentation says what the repository holds: the architecture page lists every file of
the package and the C++ sources, one line each, and nothing that is not there."""

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def tree_files(page: Path) -> set[str]:
    """Paths of the files in the page's text tree (folders end with '/')."""
    block = page.read_text().split("```text\n", 1)[1].split("```", 1)[0]
    files, stack = set(), []
    for line in block.splitlines():
        match = re.match(r"^((?:│   |    )*)(?:├── |└── )?(\S+)", line)
        depth = len(match.group(1)) // 4 + (1 if re.search(r"[├└]── ", line) else 0)
        name = match.group(2)
        stack[depth:] = [name]
        if not name.endswith("/"):
            files.add("".join(stack))
    return files


def test_architecture_page_lists_every_file():
    tracked = subprocess.run(["git", "ls-files", "crm_kernels", "csrc"], cwd=ROOT, capture_output=True, text=True,
                             check=True).stdout.split()  # fmt: skip
    assert tree_files(ROOT / "docs" / "architecture.md") == {path for path in tracked if (ROOT / path).exists()}

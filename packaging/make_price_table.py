"""Regenerate steward/pricing/data/prices.json from the price table inside LiteLLM's wheel.

LiteLLM (MIT licensed) ships model_prices_and_context_window_backup.json in its wheel, so this
needs only the package index:  python packaging/make_price_table.py [--wheel PATH]
"""

from __future__ import annotations

import argparse
import glob
import json
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from steward.pricing.table import BUNDLED, reduce  # noqa: E402

MEMBER = "litellm/model_prices_and_context_window_backup.json"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--wheel", help="a litellm wheel already downloaded")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        wheel = args.wheel
        if wheel is None:
            subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q",
                            "litellm", "-d", tmp], check=True)
            wheel = glob.glob(f"{tmp}/litellm-*.whl")[0]
        version = Path(wheel).name.split("-")[1]
        raw = json.loads(zipfile.ZipFile(wheel).read(MEMBER))
    table = reduce(raw, f"litellm {version} ({MEMBER}, MIT)")
    BUNDLED.write_text(json.dumps(table, indent=1, sort_keys=True) + "\n")
    print(f"{BUNDLED}: {len(table['models'])} models from litellm {version}, "
          f"version {table['version']}")


if __name__ == "__main__":
    main()

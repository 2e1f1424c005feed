"""The README's picture of the search page: index a slice of SciFact, serve it with `hce-serve http`, search in
headless Chromium and save the window as a PNG.

    python scripts/page_screenshot.py --model EXPORT_DIR [--limit 1000] [--out docs/img/search-page.png]

SciFact has no metadata, so each document gets one field derived from its own text, ``length`` (its abstract's
word count: short under 150, medium to 250, long beyond), to show the filters. Chromium and chromedriver as for
tests/test_browser.py (scripts/setup-env.sh installs them).
"""

from __future__ import annotations

import argparse
import gzip
import json
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlencode

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the browser harness the tests use: one place for Chromium's flags

from browser import Server, browser_missing, chromium_driver  # noqa: E402


def length_bucket(text: str) -> str:
    n = len(text.split())
    return "short" if n < 150 else "medium" if n <= 250 else "long"


def write_corpus(src: Path, dst: Path, limit: int) -> int:
    opener = gzip.open if src.suffix == ".gz" else open
    n = 0
    with opener(src, "rt", encoding="utf-8") as fh, open(dst, "w", encoding="utf-8") as out:
        for line in fh:
            if n == limit:
                break
            doc = json.loads(line)
            doc["metadata"] = {"length": length_bucket(doc.get("text", ""))}
            out.write(json.dumps(doc, ensure_ascii=False) + "\n")
            n += 1
    return n


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path, required=True, help="An EXPORT_DIR (hce-export onnx) to index with.")
    ap.add_argument("--corpus", type=Path, default=ROOT / "demo/data/scifact/corpus.jsonl.gz")
    ap.add_argument("--limit", type=int, default=1000, help="Documents to index (the first of the corpus).")
    ap.add_argument("--query", default="vitamin D deficiency and cancer risk")
    ap.add_argument("--mode", default="hybrid", choices=["dense", "lexical", "hybrid"])
    ap.add_argument("--out", type=Path, default=ROOT / "docs/img/search-page.png")
    ap.add_argument("--size", default="1280x900", help="Window size, WIDTHxHEIGHT.")
    args = ap.parse_args()
    if why := browser_missing():
        print(f"error: {why}", file=sys.stderr)
        return 1
    for p in (args.model, args.corpus):
        if not p.exists():
            print(f"error: {p} does not exist", file=sys.stderr)
            return 1
    width, height = (int(x) for x in args.size.lower().split("x"))

    from hce_serve.engine import Engine

    with tempfile.TemporaryDirectory(prefix="hce-page-shot-") as tmp:
        work = Path(tmp)
        n = write_corpus(args.corpus, work / "corpus.jsonl", args.limit)
        print(f"indexing {n:,} documents of {args.corpus.name} ...", file=sys.stderr)
        Engine.build(args.model, work / "corpus.jsonl", work / "idx")
        with Server(["--index", work / "idx", "--read-only"], work / "server.log") as srv:
            driver = chromium_driver(work / "profile", (width, height))
            try:
                query = urlencode({"q": args.query, "k": 10, "mode": args.mode})
                driver.get(f"{srv.url}/?{query}")
                deadline = time.monotonic() + 60
                while "results for" not in driver.find_element("id", "status").text:
                    if time.monotonic() > deadline:
                        print("error: the page showed no results within 60 s", file=sys.stderr)
                        return 1
                    time.sleep(0.1)
                args.out.parent.mkdir(parents=True, exist_ok=True)
                driver.save_screenshot(str(args.out))
            finally:
                driver.quit()
    print(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())

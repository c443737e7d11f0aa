"""Editor benchmark in headless Chromium: time-to-interactive with N cells and frames per second
while panning and while dragging a vertex, measured by the page itself (frontend/src/bench).

    .venv/bin/python bench/editor_bench.py --cells 1000
Targets: interactive within 1 s of the data arriving; >= 30 fps panning and vertex dragging.
Needs the built frontend (bin/run or `npm run build` in frontend/) and Debian's chromium.
"""

from __future__ import annotations

import argparse
import functools
import http.server
import json
import threading
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DIST = ROOT / "frontend" / "dist"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]


class _StaticHandler(http.server.SimpleHTTPRequestHandler):
    """Serves frontend/dist under /static/, as Django does."""

    def translate_path(self, path: str) -> str:
        path = path.split("?", 1)[0]
        relative = path.removeprefix("/static/")
        return str(DIST / relative)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - stdlib signature
        return


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--cells", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--mode", choices=["image", "vector"], default="image")
    args = parser.parse_args()
    if not (DIST / "bench.html").exists():
        raise SystemExit("frontend/dist/bench.html is missing: build the frontend first (bin/run or npm run build)")

    from playwright.sync_api import sync_playwright

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_StaticHandler))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_port}/static/bench.html?n={args.cells}&mode={args.mode}"
    results = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        for _ in range(args.runs):
            page = browser.new_page(viewport={"width": 1440, "height": 900})
            page.goto(url)
            page.wait_for_function("window.__benchResult !== undefined", timeout=120_000)
            result = page.evaluate("window.__benchResult")
            if not result.get("ok"):
                raise SystemExit(f"bench page failed: {json.dumps(result)[:500]}")
            results.append(result)
            page.close()
        browser.close()
    server.shutdown()

    def median(values: list[float]) -> float:
        return sorted(values)[len(values) // 2]

    tti = median([r["tti_ms"] for r in results])
    pan = median([r["pan"]["fps"] for r in results])
    drag = median([r["drag"]["fps"] for r in results])
    print(f"cells: {results[0]['cells_loaded']}  mode: {args.mode}  runs: {args.runs}  (median)")
    print(f"time to interactive  {tti:7.0f} ms   (target <= 1000 ms)")
    print(
        f"pan                  {pan:7.1f} fps  (target >= 30;"
        f" p95 frame {median([r['pan']['frame_ms_p95'] for r in results]):.1f} ms)"
    )
    print(f"vertex drag          {drag:7.1f} fps  (target >= 30; {results[0]['drag']['mode']})")


if __name__ == "__main__":
    main()

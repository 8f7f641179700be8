#!/usr/bin/env python3
"""Opens the master's dashboard in headless Chromium (Debian's chromium and chromium-driver,
driven by Selenium) while a job runs, and checks what a person would see: every queue named
in --queues listed with non-zero rates in and out, one worker row per connected worker on
--worker-queue, both charts drawn, the keyboard reaching the controls, a phone-width window
without sideways scrolling, and no console error. Saves a screenshot to --screenshot.

Every wait is bounded; any failure exits non-zero with what was seen.

    dashboard.py --url http://127.0.0.1:PORT/ --workers 3 --screenshot out.png
"""
import argparse
import json
import shutil
import sys
import time

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import Select

LIMIT = 60  # seconds for any one condition

# What the page shows, read in the page: the rows of each table as text, and for each chart
# the points drawn and how many of its pixels are not background.
READ = """
const rows = (id) => [...document.querySelectorAll('#' + id + ' tr')]
  .map((tr) => [...tr.children].map((td) => td.textContent.trim()));
const ink = (id) => {
  const c = document.getElementById(id);
  const data = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
  let n = 0;
  for (let i = 3; i < data.length; i += 4) if (data[i] > 0) n++;
  return { points: Number(c.dataset.points || 0), ink: n, width: c.width };
};
return {
  queues: rows('queue-rows'), workers: rows('worker-rows'), dead: rows('dead-rows'),
  status: document.getElementById('status').textContent,
  error: document.getElementById('error').textContent,
  charts: { throughput: ink('chart-throughput'), latency: ink('chart-latency') },
  overflow: document.documentElement.scrollWidth - window.innerWidth,
};
"""


def rate(text):
    """A rate as the page writes it (1.2k, 3.40M, 950, 0.0) as a number."""
    text = text.replace(",", "")
    scale = {"k": 1e3, "M": 1e6}.get(text[-1:], 1)
    try:
        return float(text.rstrip("kM")) * scale
    except ValueError:
        return 0.0


def wait_for(driver, what, check):
    deadline = time.monotonic() + LIMIT
    seen = None
    while time.monotonic() < deadline:
        seen = driver.execute_script(READ)
        if check(seen):
            return seen
        time.sleep(0.25)
    sys.exit(f"timed out after {LIMIT}s waiting for {what}; the page showed:\n"
             + json.dumps(seen, indent=1))


def browser():
    chromium = shutil.which("chromium")
    driver_path = shutil.which("chromedriver")
    if not chromium or not driver_path:
        sys.exit("chromium and chromedriver are needed (Debian: apt-get install chromium "
                 "chromium-driver; scripts/test-deps.sh installs them)")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1280,1100", "--hide-scrollbars"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(executable_path=driver_path), options=options)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", required=True)
    ap.add_argument("--workers", type=int, required=True)
    ap.add_argument("--worker-queue", default="tasks")
    # A name ending in "*" stands for any queue it begins (a job's reply queue is
    # squares.reply.<random>).
    ap.add_argument("--queues", default="tasks,squares.reply.*")
    ap.add_argument("--screenshot", required=True)
    # For the README's picture: seconds to let the charts fill, and the charts' window.
    ap.add_argument("--settle", type=float, default=0)
    ap.add_argument("--window", choices=["60", "300", "600"])
    ap.add_argument("--size", help="WIDTHxHEIGHT of the window for the screenshot")
    args = ap.parse_args()
    queues = args.queues.split(",")
    driver = browser()
    driver.set_page_load_timeout(LIMIT)
    try:
        driver.get(args.url)

        def busy(seen):
            rows = [r for r in seen["queues"] if len(r) >= 9]

            def named(q):
                if q.endswith("*"):
                    return [r for r in rows if r[0].startswith(q[:-1])]
                return [r for r in rows if r[0] == q]

            lively = all(any(rate(r[5]) > 0 and rate(r[6]) > 0 for r in named(q))
                         for q in queues)
            workers = [r for r in seen["workers"] if len(r) >= 7
                       and args.worker_queue in r[2].split(", ")]
            charts = seen["charts"]
            drawn = all(c["points"] >= 4 and c["ink"] > 500 for c in charts.values())
            return lively and len(workers) == args.workers and drawn and seen["status"] == "serving"

        seen = wait_for(driver, f"queues {queues} with non-zero rates, {args.workers} workers "
                                f"on {args.worker_queue!r} and both charts drawn", busy)

        # The keyboard: the first Tab reaches the skip link, and `p` pauses and resumes.
        body = driver.find_element(By.TAG_NAME, "body")
        body.send_keys(Keys.TAB)
        focused = driver.switch_to.active_element
        if focused.get_attribute("class") != "skip":
            sys.exit(f"the first Tab focused {focused.tag_name}.{focused.get_attribute('class')}, "
                     "not the skip link")
        focused.send_keys(Keys.ENTER)
        driver.switch_to.active_element.send_keys("p")
        wait_for(driver, "`p` to pause", lambda s: s["status"] == "paused")
        driver.switch_to.active_element.send_keys("p")
        wait_for(driver, "`p` again to resume", lambda s: s["status"] == "serving")
        pause = driver.find_element(By.ID, "pause")
        if pause.get_attribute("aria-pressed") != "false":
            sys.exit("the pause button does not say it is released")

        if args.window:
            Select(driver.find_element(By.ID, "window")).select_by_value(args.window)
        driver.execute_script("document.activeElement.blur(); window.scrollTo(0, 0)")
        if args.size:
            driver.set_window_size(*map(int, args.size.split("x")))
        time.sleep(args.settle)
        driver.save_screenshot(args.screenshot)

        # A phone: nothing wider than the screen but the tables, which scroll in their boxes.
        driver.set_window_size(390, 844)
        wait_for(driver, "the page to fit a 390 px wide window",
                 lambda s: s["overflow"] <= 0 and s["charts"]["throughput"]["points"] > 0)

        errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
        if errors:
            sys.exit("console errors:\n" + "\n".join(e["message"] for e in errors))
        print(json.dumps({"ok": True, "queues": seen["queues"], "workers": seen["workers"],
                          "charts": seen["charts"]}))
    finally:
        driver.quit()


if __name__ == "__main__":
    main()

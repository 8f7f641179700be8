#!/usr/bin/env python3
"""Checks the syntax of the operations examples in deploy/ (they cannot run here): every YAML
file parses (all its documents), every JSON file parses, and each file has the shape its tool
expects. Prints the Prometheus metric names the files use, one per line, for the Rust test to
check against a real master's /metrics. Usage: deploy.py DEPLOY_DIR"""
import json
import pathlib
import re
import sys

import yaml

NAME = re.compile(r"\btaskmill_[a-z0-9_]+")


def fail(path, why):
    sys.exit(f"{path}: {why}")


def check_yaml(path, docs):
    if path.name == "prometheus.yml":
        (cfg,) = docs
        jobs = cfg.get("scrape_configs") or fail(path, "no scrape_configs")
        for job in jobs:
            job.get("job_name") or fail(path, "a scrape config without job_name")
        return
    for doc in docs:
        if doc is None:
            continue
        for key in ("apiVersion", "kind", "metadata"):
            if key not in doc:
                fail(path, f"a document without {key}")
        kind = doc["kind"]
        if kind in ("StatefulSet", "Deployment"):
            containers = doc["spec"]["template"]["spec"]["containers"]
            containers or fail(path, f"{kind} without containers")
            for c in containers:
                c.get("image") or fail(path, f"container {c.get('name')} without an image")
        if kind == "ScaledObject":
            triggers = doc["spec"]["triggers"]
            any(t["type"] == "prometheus" for t in triggers) or fail(path, "no prometheus trigger")


def check_json(path, doc):
    if "grafana" in path.name:
        panels = doc.get("panels") or fail(path, "a dashboard without panels")
        for p in panels:
            if p.get("type") != "row" and not p.get("targets"):
                fail(path, f"panel {p.get('title')!r} has no targets")


def main():
    root = pathlib.Path(sys.argv[1])
    files = sorted(p for p in root.rglob("*") if p.suffix in (".yml", ".yaml", ".json"))
    files or fail(root, "no YAML or JSON files")
    names = set()
    for path in files:
        text = path.read_text()
        try:
            if path.suffix == ".json":
                check_json(path, json.loads(text))
            else:
                check_yaml(path, list(yaml.safe_load_all(text)))
        except (yaml.YAMLError, json.JSONDecodeError, KeyError, TypeError) as e:
            fail(path, f"does not parse as expected: {e}")
        names.update(NAME.findall(text))
        print(f"checked {path}", file=sys.stderr)
    print("\n".join(sorted(names)))


if __name__ == "__main__":
    main()

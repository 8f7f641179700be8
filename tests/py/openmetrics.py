#!/usr/bin/env python3
"""Parses an OpenMetrics exposition (the master's /metrics) from stdin with the official
Prometheus client library's strict parser, and prints what it found as JSON for the Rust test
that calls it: {"families": {name: type}, "samples": [{"name", "labels", "value"}]}. A text
the parser rejects ends with a non-zero exit and its message."""
import json
import sys

from prometheus_client.openmetrics.parser import text_string_to_metric_families


def main():
    text = sys.stdin.read()
    families, samples = {}, []
    for family in text_string_to_metric_families(text):
        families[family.name] = family.type
        for s in family.samples:
            samples.append({"name": s.name, "labels": s.labels, "value": s.value})
    json.dump({"families": families, "samples": samples}, sys.stdout)


if __name__ == "__main__":
    main()

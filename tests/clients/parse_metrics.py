"""Parses Prometheus text exposition from stdin with the official Python
client's parser (prometheus-client, PyPI) and prints every family as JSON:
{"name": {"type": ..., "samples": [[sample_name, labels, value], ...]}}.
A format error makes the parser raise, and this script exit non-zero."""
import json
import sys

from prometheus_client.parser import text_string_to_metric_families

out = {}
for family in text_string_to_metric_families(sys.stdin.read()):
    out[family.name] = {
        "type": family.type,
        "samples": [[s.name, s.labels, s.value] for s in family.samples],
    }
json.dump(out, sys.stdout)

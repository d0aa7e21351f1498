"""
Turn trial's closing lines (one run per runtime: CPython, then PyPy) into
one 'trial: N passed, N failed[, N skipped]' for all of them.
"""

import re
import sys

text = open(sys.argv[1], errors="replace").read()
ran = re.findall(r"^Ran (\d+) tests? in", text, re.M)
status = re.findall(r"^(PASSED|FAILED) \((.*)\)$", text, re.M)
if not ran or not status:
    print("trial: 0 passed, 1 failed")
    sys.exit(0)
passed = failed = skipped = 0
for total, (_, summary) in zip(ran, status):
    counts = {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", summary)}
    bad = counts.get("failures", 0) + counts.get("errors", 0) + counts.get("unexpectedSuccesses", 0)
    skips = counts.get("skips", 0) + counts.get("expectedFailures", 0)
    failed += bad
    skipped += skips
    passed += int(total) - bad - skips
line = f"trial: {passed} passed, {failed} failed"
if skipped:
    line += f", {skipped} skipped"
print(line)

"""
Turn trial's closing line into 'trial: N passed, N failed[, N skipped]'.
"""

import re
import sys

text = open(sys.argv[1], errors="replace").read()
ran = re.findall(r"^Ran (\d+) tests? in", text, re.M)
status = re.findall(r"^(PASSED|FAILED) \((.*)\)$", text, re.M)
if not ran or not status:
    print("trial: 0 passed, 1 failed")
    sys.exit(0)
total = int(ran[-1])
counts = {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", status[-1][1])}
failed = counts.get("failures", 0) + counts.get("errors", 0) + counts.get("unexpectedSuccesses", 0)
skipped = counts.get("skips", 0) + counts.get("expectedFailures", 0)
passed = total - failed - skipped
line = f"trial: {passed} passed, {failed} failed"
if skipped:
    line += f", {skipped} skipped"
print(line)

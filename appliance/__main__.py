"""
C{python -m appliance}: the operator's command line (L{appliance.admin.cli}).
"""

import sys

from appliance.admin.cli import run

if __name__ == "__main__":
    sys.exit(run(sys.argv[1:]))

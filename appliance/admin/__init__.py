"""
The admin listener of every process: its status (and the cluster's, asked
of the peers' admin listeners), the HTML status page, the sessions of a
node, and the operations the command line (C{python -m appliance}) calls.
"""

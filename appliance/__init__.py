"""
appliance: web sessions that survive the death of the server holding them,
replicated primary to secondary over Perspective Broker, with no central
session database.
"""

__version__ = "0.1.0"

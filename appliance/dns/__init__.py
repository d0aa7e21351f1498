"""
The DNS round-robin responder: L{appliance.dns.service.DnsService}.
"""

from twisted.application.service import ServiceMaker

appliance = ServiceMaker(
    "appliance",
    "appliance.tap",
    "Session-replicating web appliance: DNS, balancer, session servers",
    "appliance",
)

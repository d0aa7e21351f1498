"""
The fault lab, the workload and the checker that prove what the appliance
promises under partitions, pauses and crashes (see lab, workload, checker,
chaos).
"""

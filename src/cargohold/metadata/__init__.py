"""The metadata database: namespaces, images, content index, snapshot index, leases,
containers.
"""

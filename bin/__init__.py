"""Small entry points a person runs against the running system. They import only `services`."""

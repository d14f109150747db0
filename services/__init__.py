"""What every process shares: configuration, logging, the bus protocol and the bus itself."""

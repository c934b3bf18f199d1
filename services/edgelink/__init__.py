"""The gRPC front door for edge agents: plain grpcio in its own process, bridged to the bus."""

"""The gRPC layer: convert request -> one core call -> convert result. No torch, no business logic."""

"""Generated gRPC code for taskpatch.v1 (see taskpatch.proto; regenerate with `make proto`)."""

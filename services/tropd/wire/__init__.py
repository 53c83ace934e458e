"""The wire contract as Python: generated stubs (`tropd.wire.v1`, from `proto/`), the codec
both sides share (`tropd.wire.codec`: numpy arrays <-> the proto `Tensor`) and the values the
messages carry (`tropd.wire.types`: capabilities, limits, timing, scores, generations).

Light on purpose (grpc, protobuf and numpy only): the client imports it on machines without
torch. See docs/architecture.md#the-wire-contract.
"""

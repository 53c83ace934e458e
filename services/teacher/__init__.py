"""tropd teacher service: batched token log-prob scoring and generation over gRPC.

The client (`tropd.teacher.client`) and the tokenizer fingerprint (`tropd.teacher.fingerprint`)
import without torch or transformers; everything else is the server.
"""

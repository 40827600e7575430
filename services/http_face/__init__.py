"""The HTTP/JSON face of a service: aiohttp in the gRPC server's event loop, over the same admission path.

``rewardline serve KIND --http-port N`` serves, beside gRPC and from the same process, queue, batcher, limits,
cache and metrics (so HTTP and gRPC requests batch together):

    POST /v1/score  /v1/compare   GET /v1/info    the proto's messages in proto3 JSON (protobuf's json_format)
    POST /get_reward                              OpenRLHF's remote reward model contract
    POST /classify                                vLLM's pooling classify contract (verl's reward loop uses it)
    GET  /health  /ready                          liveness and readiness for load balancers

Every error is JSON in vLLM's (OpenAI's) error shape, ``{"error": {"message", "type", "param", "code"}}``, with the
HTTP status its gRPC status maps to (errors.py).
"""

#!/usr/bin/env python3
"""Conformance client: talks to Floodgate with stubs generated from Envoy's own protos.

The stubs come from PyPI's xds-protos (Envoy's data-plane-api compiled by its maintainers),
not from Floodgate's hand-written proto/ files, so a pass proves the two agree on the wire:
package and service names, message names, field numbers and enum values.

Usage: client.py HOST:PORT   (the server must run tests/conformance/config.yaml)
Exits non-zero, naming the failed check, on any mismatch.
"""

import sys

import grpc
from envoy.extensions.common.ratelimit.v3 import ratelimit_pb2
from envoy.service.ratelimit.v3 import rls_pb2, rls_pb2_grpc
from envoy.type.v3 import ratelimit_unit_pb2
from google.protobuf import wrappers_pb2

Code = rls_pb2.RateLimitResponse.Code
Unit = rls_pb2.RateLimitResponse.RateLimit.Unit


def descriptor(*entries, limit=None, hits=None):
    d = ratelimit_pb2.RateLimitDescriptor(
        entries=[ratelimit_pb2.RateLimitDescriptor.Entry(key=k, value=v) for k, v in entries]
    )
    if limit is not None:
        d.limit.CopyFrom(limit)
    if hits is not None:
        d.hits_addend.CopyFrom(wrappers_pb2.UInt64Value(value=hits))
    return d


def check(name, condition, detail=""):
    if not condition:
        print(f"FAIL {name} {detail}")
        sys.exit(1)
    print(f"ok   {name}")


def main():
    channel = grpc.insecure_channel(sys.argv[1])
    grpc.channel_ready_future(channel).result(timeout=10)
    stub = rls_pb2_grpc.RateLimitServiceStub(channel)

    def call(*descriptors, domain="conformance", hits_addend=0):
        request = rls_pb2.RateLimitRequest(
            domain=domain, descriptors=list(descriptors), hits_addend=hits_addend
        )
        return stub.ShouldRateLimit(request, timeout=5)

    # Counting up to the limit, then OVER_LIMIT, with every status field on the wire.
    for remaining in (1, 0):
        r = call(descriptor(("client", "c1")))
        s = r.statuses[0]
        check(f"ok with {remaining} remaining", r.overall_code == Code.OK and s.code == Code.OK)
        check("limit_remaining", s.limit_remaining == remaining, str(s.limit_remaining))
        check("current_limit", (s.current_limit.requests_per_unit, s.current_limit.unit,
                                s.current_limit.name) == (2, Unit.MINUTE, "per_client"), str(s.current_limit))
        reset = s.duration_until_reset.seconds + s.duration_until_reset.nanos / 1e9
        check("duration_until_reset", 0 < reset <= 60, str(reset))
    r = call(descriptor(("client", "c1")))
    check("over limit", r.overall_code == Code.OVER_LIMIT and r.statuses[0].code == Code.OVER_LIMIT)

    # WEEK, the newest unit value.
    r = call(descriptor(("weekly", "w")))
    check("week unit", r.statuses[0].current_limit.unit == Unit.WEEK, str(r.statuses[0].current_limit))

    # Statuses in request order; a descriptor with no rule is OK without a limit.
    r = call(descriptor(("none", "x")), descriptor(("client", "c2")))
    check("two statuses", len(r.statuses) == 2)
    check("unmatched has no limit", not r.statuses[0].HasField("current_limit"))
    check("matched has a limit", r.statuses[1].HasField("current_limit"))

    # The request-level hits_addend.
    r = call(descriptor(("client", "c3")), hits_addend=2)
    check("hits_addend counts", r.overall_code == Code.OK and r.statuses[0].limit_remaining == 0)

    # The descriptor-level hits_addend (UInt64Value, field 3): 0 only looks.
    r = call(descriptor(("client", "c4"), hits=0))
    check("descriptor hits_addend 0 peeks", r.statuses[0].limit_remaining == 2, str(r.statuses[0]))
    r = call(descriptor(("client", "c4"), hits=3))
    check("descriptor hits_addend over", r.overall_code == Code.OVER_LIMIT)

    # A limit override (field 2, envoy.type.v3.RateLimitUnit) replaces the configured limit.
    override = ratelimit_pb2.RateLimitDescriptor.RateLimitOverride(
        requests_per_unit=7, unit=ratelimit_unit_pb2.RateLimitUnit.Value("HOUR")
    )
    r = call(descriptor(("client", "c5"), limit=override))
    s = r.statuses[0]
    check("override applied", (s.current_limit.requests_per_unit, s.current_limit.unit) == (7, Unit.HOUR),
          str(s.current_limit))

    # Unknown domain: OK.
    r = call(descriptor(("client", "c1")), domain="nobody")
    check("unknown domain ok", r.overall_code == Code.OK)

    # Bad requests: INVALID_ARGUMENT.
    for name, request in [("empty domain", ("", [descriptor(("a", "b"))])),
                          ("no descriptors", ("conformance", []))]:
        try:
            stub.ShouldRateLimit(rls_pb2.RateLimitRequest(domain=request[0], descriptors=request[1]),
                                 timeout=5)
            check(name, False, "no error")
        except grpc.RpcError as e:
            check(name, e.code() == grpc.StatusCode.INVALID_ARGUMENT, str(e.code()))

    print("conformance: all checks passed")


if __name__ == "__main__":
    main()

"""``clip-image-encoder health``: exit 0 when a served encoder and every Executor behind it are ready.

It asks what Jina's ``Client.is_flow_ready`` asks, the gateway's dry run through every Executor, but
with grpcio and protobuf (or, over http and websocket, the gateway's ``GET /dry_run``) instead of
Jina's client: importing Jina imports docarray, which imports torch, seconds of start-up that the
container's HEALTHCHECK would pay every 30 s.
"""

from __future__ import annotations

import argparse
import json
import urllib.error
import urllib.request

DRY_RUN_METHOD = "/jina.JinaGatewayDryRunRPC/dry_run"
"""Jina's gateway service and method (``jina.proto``'s ``JinaGatewayDryRunRPC``); the request is an Empty."""
STATUS_CODE_FIELD, SUCCESS = 1, 0
"""``StatusProto.code`` is field 1, and ``SUCCESS`` is 0: the default that protobuf does not send."""


def register(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("health", help="exit 0 if a served encoder and its Executors are ready")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=51000)
    parser.add_argument("--protocol", choices=("grpc", "http", "websocket"), default="grpc")
    parser.add_argument("--timeout", type=float, default=5.0, help="seconds")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    ask = dry_run_over_grpc if args.protocol == "grpc" else dry_run_over_http
    ready = ask(args.host, args.port, args.timeout)
    print("ready" if ready else "not ready")
    return 0 if ready else 1


def dry_run_over_grpc(host: str, port: int, timeout: float) -> bool:
    """The gateway's gRPC dry run succeeded: its ``StatusProto`` carries no code other than ``SUCCESS``."""
    import grpc
    from google.protobuf import empty_pb2, unknown_fields

    with grpc.insecure_channel(f"{host}:{port}") as channel:
        dry_run = channel.unary_unary(
            DRY_RUN_METHOD,
            request_serializer=empty_pb2.Empty.SerializeToString,
            response_deserializer=empty_pb2.Empty.FromString,  # StatusProto's fields arrive as unknown fields
        )
        try:
            status = dry_run(empty_pb2.Empty(), timeout=timeout)
        except grpc.RpcError:
            return False
    codes = [field.data for field in unknown_fields.UnknownFieldSet(status) if field.field_number == STATUS_CODE_FIELD]
    return all(code == SUCCESS for code in codes)


def dry_run_over_http(host: str, port: int, timeout: float) -> bool:
    """The gateway's ``GET /dry_run`` (http and websocket gateways) answered a ``SUCCESS`` status."""
    try:
        with urllib.request.urlopen(f"http://{host}:{port}/dry_run", timeout=timeout) as response:
            status = json.load(response)
    except (OSError, ValueError, urllib.error.URLError):
        return False
    return status.get("code") in (SUCCESS, "SUCCESS")

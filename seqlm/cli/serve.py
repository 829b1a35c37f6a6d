"""``seqlm serve``: the playground page and its API, on this machine, until Ctrl-C."""

from __future__ import annotations

import socket
import warnings

from seqlm.cli.flags import add_config_flags, given, warn
from seqlm.decoding import OOVWarning
from seqlm.errors import ConfigError

LOOPBACK = ("127.0.0.1", "localhost", "::1")


def register(sub) -> None:
    from seqlm.serve.limits import Limits

    p = sub.add_parser("serve", help="a local web page to look inside trained models")
    p.add_argument("runs", nargs="+", metavar="RUN",
                   help="run or checkpoint directories to serve (the first is the default)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on; anything but "
                   "loopback exposes the models to the network")
    p.add_argument("--port", type=int, default=8000, help="TCP port (0: any free one)")
    p.add_argument("--device", default="cpu", help="auto, cpu, cuda, cuda:N or mps (torch)")
    p.add_argument("--backend", default=None, choices=["torch", "onnx"], help="onnx: serve "
                   "each run's export (RUN/onnx, or an export directory) with onnxruntime, "
                   "never importing torch (no gradient view); default: onnx for an export "
                   "directory or without torch installed, else torch")
    add_config_flags(p, Limits, title="limits")
    p.set_defaults(handler=cmd_serve)


def _bind(host: str, port: int) -> socket.socket:
    """A listening socket, so that a taken port is a clear error before anything starts."""
    if not 0 <= port <= 65535:
        raise ConfigError(f"--port {port} is not a TCP port; use 1-65535, or 0 for any free one")
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise ConfigError(f"--host {host}: cannot resolve it ({exc.strerror}); use an address "
                          "such as 127.0.0.1") from None
    family, _, _, _, address = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as exc:
        sock.close()
        raise ConfigError(f"cannot listen on {host}:{port} ({exc.strerror}); choose another "
                          "--port, or 0 for any free one") from None
    sock.listen(128)
    return sock


def cmd_serve(args) -> int:
    try:
        import uvicorn

        from seqlm.serve.app import create_app
    except ImportError as exc:
        raise ConfigError(f"seqlm serve needs the web stack ({exc.name} is missing); install "
                          "it with: pip install -e '.[serve]'") from None
    from seqlm.serve.limits import Limits
    from seqlm.serve.runs import load_runs

    limits = Limits(**given(args, Limits))
    runs = load_runs(args.runs, device=args.device, backend=args.backend)
    # The page marks tokens outside the vocabulary; a warning per request would flood stderr.
    warnings.filterwarnings("ignore", category=OOVWarning)
    exposed = args.host not in LOOPBACK
    sock = _bind(args.host, args.port)
    port = sock.getsockname()[1]
    hosts = None if exposed else list(LOOPBACK)
    app = create_app(runs, limits=limits, allowed_hosts=hosts)
    if exposed:
        warn(f"--host {args.host} serves the models to every machine that can reach this one; "
             "the playground has no authentication")
    shown = f"[{args.host}]" if ":" in args.host else args.host
    print(f"seqlm playground: http://{shown}:{port}/  ({len(runs)} run(s): "
          f"{', '.join(runs)}; API description at /docs; Ctrl-C stops)", flush=True)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
    try:
        server.run(sockets=[sock])
    except KeyboardInterrupt:  # uvicorn re-raises Ctrl-C after its graceful shutdown
        pass
    finally:
        sock.close()
    print("seqlm playground: stopped", flush=True)
    return 0

"""`python -m producer.llama_serve`: llama-cpp-python's OpenAI-compatible server, serving on a
listening socket its parent made and passed down (its file descriptor number in --fd).

producer.local_server binds the port itself and keeps it from before this server starts until the
worker ends, so no other user of the machine can take the port between a pick and the server's
bind, or after the server dies, and receive the worker's requests and key. llama_cpp.server's own
entry point only binds a host and port; this one builds the same app (llama_cpp.server.app's
create_app, the documented way to embed it) and hands uvicorn the socket. The API key comes from
API_KEY in the environment, as llama_cpp.server's settings read it.
"""

from __future__ import annotations

import argparse
import os
import socket


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m producer.llama_serve")
    ap.add_argument("--model", required=True)
    ap.add_argument("--model_alias", required=True)
    ap.add_argument("--n_ctx", type=int, default=8192)
    ap.add_argument("--n_threads", type=int, default=max(1, os.cpu_count() or 2))
    ap.add_argument("--fd", type=int, required=True, help="the listening socket's file descriptor")
    a = ap.parse_args()
    sock = socket.socket(fileno=a.fd)

    import uvicorn
    from llama_cpp.server.app import create_app
    from llama_cpp.server.settings import ModelSettings, ServerSettings

    host, port = sock.getsockname()[:2]
    app = create_app(
        server_settings=ServerSettings(host=host, port=port),
        model_settings=[ModelSettings(model=a.model, model_alias=a.model_alias, n_ctx=a.n_ctx, n_threads=a.n_threads)],
    )
    uvicorn.Server(uvicorn.Config(app, log_level="info")).run(sockets=[sock])


if __name__ == "__main__":
    main()

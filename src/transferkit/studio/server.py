"""Running the studio with uvicorn (one process; training runs in processes of its own)."""

from __future__ import annotations

from pathlib import Path

from ..config import StudioOptions


def studio(data: list[str | Path], options: StudioOptions | None = None, **kwargs) -> None:
    """Serve the studio over the datasets `data` and the runs in `options.runs_dir` until
    interrupted. Example: ``transferkit.studio(["data/flowers"], runs_dir="runs")``"""
    import uvicorn

    from ..serving.server import BannerServer, bind_port
    from .app import create_studio

    options = options or StudioOptions(**kwargs)
    sock = bind_port(options.host, options.port)
    app = create_studio(data, options)
    port = sock.getsockname()[1]
    shown = f"[{options.host}]" if ":" in options.host else options.host
    address = f"http://{shown}:{port}/" + (f"?token={options.token}" if options.token else "")
    datasets = ", ".join(d.name for d in app.state.studio.datasets.values()) or "no dataset"
    banner = (f"studio at {address}  ({datasets}; runs in {app.state.studio.runs}; Ctrl-C stops)")
    config = uvicorn.Config(app, host=options.host, port=port, http="h11", access_log=False, log_level="warning",
                            timeout_graceful_shutdown=5, server_header=False)
    BannerServer(config, banner).run(sockets=[sock])

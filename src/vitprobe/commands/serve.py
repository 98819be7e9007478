"""``vitprobe serve``: the local web demo (optional extra ``web``)."""

from __future__ import annotations

import os
import signal
import tempfile
import threading
import time
from pathlib import Path
from typing import Annotated

import typer

from ..cli_common import fail


def register(app: typer.Typer) -> None:
    @app.command()
    def serve(
        model: Annotated[list[str] | None, typer.Option(
            "--model", "-m", help="model spec offered on the page; repeat for several (the first is the default)"
        )] = None,
        port: Annotated[int, typer.Option(help="port on 127.0.0.1")] = 7860,
        listen_all: Annotated[bool, typer.Option(
            "--listen-all", help="listen on 0.0.0.0, i.e. every network interface (anyone who can reach it can use it)"
        )] = False,
        max_upload_mb: Annotated[float, typer.Option(help="largest upload accepted, in MiB")] = 20.0,
        max_megapixels: Annotated[float, typer.Option(help="largest image accepted, in megapixels")] = 40.0,
        device: Annotated[str | None, typer.Option(help="torch device, e.g. cuda")] = None,
    ) -> None:
        """Start the web demo: upload or pick a photo, choose model, method, layer, heads; click a patch."""

        if not 0 < port < 65536 or max_upload_mb <= 0 or max_megapixels <= 0:
            raise fail("--port must be in 1..65535, --max-upload-mb and --max-megapixels positive")
        specs = list(dict.fromkeys(model or ["offline"]))
        host = "0.0.0.0" if listen_all else "127.0.0.1"
        if listen_all:
            typer.echo("vitprobe: warning: --listen-all serves the demo on every network interface; anyone who "
                       "can reach this machine can upload images and run the models", err=True)
        # from here on a plain kill stops the server as cleanly as Ctrl-C, also while it is still starting: the
        # request is noted and acted on between steps (an exception raised at an arbitrary point of the model
        # load or of gradio's start could leave threads or the exit status behind)
        stop = threading.Event()
        previous = signal.signal(signal.SIGTERM, lambda _signum, _frame: stop.set())
        try:
            _run_demo(specs, host, port, max_upload_mb, max_megapixels, device, stop)
        except KeyboardInterrupt:
            pass
        finally:
            signal.signal(signal.SIGTERM, previous)
        typer.echo("vitprobe: demo stopped")


def _run_demo(specs: list[str], host: str, port: int, max_upload_mb: float, max_megapixels: float,
              device: str | None, stop: threading.Event) -> None:
    """Build and serve the demo until ``stop`` is set or Ctrl-C; its temporary files go with it."""
    with tempfile.TemporaryDirectory(prefix="vitprobe-serve-") as tmp:
        # gradio keeps its upload copies and served files here; all of it goes when the server stops
        os.environ["GRADIO_TEMP_DIR"] = str(Path(tmp) / "gradio")
        from transformers.utils import logging as hf_logging

        from ..web.app import DemoError, build_demo

        hf_logging.disable_progress_bar()
        max_bytes = int(max_upload_mb * 2**20)
        try:
            demo = build_demo(specs, work_dir=Path(tmp) / "work", max_upload_bytes=max_bytes,
                              max_pixels=int(max_megapixels * 1e6), device=device)
        except (ImportError, DemoError) as err:
            raise fail(str(err)) from None
        if stop.is_set():
            return
        try:
            _, url, _ = demo.launch(server_name=host, server_port=port, share=False, max_file_size=max_bytes,
                                    show_error=False, prevent_thread_lock=True, quiet=True)
        except OSError as err:
            raise fail(f"cannot serve on {host}:{port}: {str(err).splitlines()[0]}") from None
        try:
            typer.echo(f"vitprobe: demo on {url} offering {', '.join(specs)}; Ctrl-C stops it")
            while demo.is_running and not stop.is_set():
                time.sleep(0.1)
        finally:
            demo.close()

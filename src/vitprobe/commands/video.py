"""``vitprobe video``: attention heat maps over every frame of a video, as mp4 and/or GIF."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..choices import DEFAULT_CLIP, VIDEO_SHORT_SIDE
from ..cli_common import (
    ACCEPTS_METHOD_OPTIONS,
    METHOD_OPTIONS_HELP,
    AlphaOpt,
    ClipOpt,
    CmapOpt,
    MethodOpt,
    ModelOpt,
    UpsampleOpt,
    check_model_spec,
    fail,
    load_model,
    method_specs,
    style_from,
)


def register(app: typer.Typer) -> None:
    @app.command(context_settings=ACCEPTS_METHOD_OPTIONS, epilog=METHOD_OPTIONS_HELP)
    def video(
        source: Annotated[list[str], typer.Argument(
            help="input video (anything ffmpeg reads: mp4, mov, webm, gif, ...), and the method's options")],
        out: Annotated[Path, typer.Option("--out", "-o", help="output .mp4 or .gif")],
        model: ModelOpt = "offline",
        method: MethodOpt = "cls",
        normalize: Annotated[str, typer.Option(
            help="colour scale: 'video' (one scale for all frames, comparable) or 'frame' (each frame its own)"
        )] = "video",
        fps: Annotated[float | None, typer.Option(help="output frame rate (resamples; default: the input's)")] = None,
        start: Annotated[float, typer.Option(help="begin this many seconds into the video")] = 0.0,
        end: Annotated[float | None, typer.Option(help="stop at this many seconds (default: the end)")] = None,
        max_frames: Annotated[int | None, typer.Option(help="stop after this many frames")] = None,
        short_side: Annotated[int, typer.Option(
            help="model-input short side in pixels; the whole frame is resized, aspect kept (0: the model's own)"
        )] = VIDEO_SHORT_SIDE,
        batch_size: Annotated[int, typer.Option(help="frames per forward pass")] = 8,
        cmap: CmapOpt = "inferno",
        alpha: AlphaOpt = 0.5,
        clip: ClipOpt = DEFAULT_CLIP,
        upsample: UpsampleOpt = "bilinear",
        gif: Annotated[bool, typer.Option("--gif", help="with an .mp4 --out, also write a GIF beside it")] = False,
        maps: Annotated[Path | None, typer.Option(
            help="also save the per-frame maps (frames, H, W) as .npy (video models: .npz, always written)")] = None,
        stride: Annotated[int | None, typer.Option(
            help="video models: frames between the starts of the model's windows (default: half its clip)")] = None,
        strip: Annotated[Path | None, typer.Option(
            help="video models: the frame-strip figure (.png; default: beside --out)")] = None,
        device: Annotated[str | None, typer.Option(help="torch device, e.g. cuda")] = None,
    ) -> None:
        """Overlay per-frame attention heat maps on a video; frames stream in batches, size and fps are kept.

        With a video model (VideoMAE, ViViT, V-JEPA 2, TimeSformer) the model runs over windows of its clip
        length every --stride frames (overlaps averaged), each tubelet's map drawn on its frames, and a frame
        strip (.png) and the maps (.npz) are written too."""
        check_model_spec(model)
        from ..render.video import OUTPUT_SUFFIXES, VideoError, VideoReader
        from ..video import VideoOptions, attention_video

        tokens, specs = method_specs(method, source)
        if len(tokens) != 1:
            raise fail(f"video takes one input video, got {len(tokens)}")
        if len(specs) != 1:
            raise fail("video takes one method with one value per option")
        name, params = specs[0]
        video_in = Path(tokens[0])
        opts = VideoOptions(method=name, params=params, normalize=normalize, short_side=short_side or None, fps=fps,
                            start=start, end=end, max_frames=max_frames, batch_size=batch_size,
                            style=style_from(cmap, alpha, clip, upsample))
        try:
            opts.check()
        except ValueError as err:
            raise fail(str(err)) from None
        if out.suffix.lower() not in OUTPUT_SUFFIXES:
            raise fail(f"--out must end in {' or '.join(OUTPUT_SUFFIXES)}, got {out.name!r}")
        if maps is not None and maps.suffix not in (".npy", ".npz"):
            raise fail(f"--maps must end in .npy (.npz for video models), got {maps.name!r}")
        if strip is not None and strip.suffix.lower() != ".png":
            raise fail(f"--strip must end in .png, got {strip.name!r}")
        outputs = [out] + ([out.with_suffix(".gif")] if gif and out.suffix.lower() == ".mp4" else [])
        if video_in.resolve() in {p.resolve() for p in outputs}:
            raise fail("--out must not overwrite the input video")
        try:
            VideoReader(video_in).close()  # an unreadable video fails here, before the model loads
        except VideoError as err:
            raise fail(str(err), code=1) from None
        vit = load_model(model, device)
        from ..models.video import VideoModel

        if isinstance(vit, VideoModel):
            _clip_video(vit, video_in, outputs, opts, stride, maps, strip, out)
            return
        if stride is not None or strip is not None:
            raise fail("--stride and --strip apply to video models; this model takes images frame by frame")
        if maps is not None and maps.suffix != ".npy":
            raise fail(f"--maps must end in .npy, got {maps.name!r}")
        try:
            result = attention_video(vit, video_in, outputs, opts, maps_path=maps)
        except VideoError as err:
            raise fail(str(err), code=1) from None
        except ValueError as err:  # a layer that does not exist, a model without CLS token
            raise fail(str(err)) from None
        h, w = result.size_hw
        typer.echo(f"{result.frames} frames of {w}x{h} at {result.fps:g} fps, {opts.method} maps on a "
                   f"{result.grid_hw[0]}x{result.grid_hw[1]} grid with {vit.name} in {result.total_seconds:.1f} s "
                   f"({result.frames / result.model_seconds:.2f} frames/s through the model); wrote "
                   + ", ".join(str(p) for p in result.outputs))


def _clip_video(vit, video_in: Path, outputs: list[Path], opts, stride: int | None, maps: Path | None,
                strip: Path | None, out: Path) -> None:
    """``video`` with a video model: windows over the clip (``clip_video``), the strip and the maps too."""
    from ..clip_video import clip_attention_video
    from ..render.video import VideoError

    maps = maps or out.with_name(out.stem + "_maps.npz")
    strip = strip or out.with_name(out.stem + "_strip.png")
    if maps.suffix != ".npz":
        raise fail(f"--maps must end in .npz for a video model, got {maps.name!r}")
    try:
        result = clip_attention_video(vit, video_in, outputs, opts, stride=stride, maps_path=maps, strip_path=strip)
    except VideoError as err:
        raise fail(str(err), code=1) from None
    except ValueError as err:
        raise fail(str(err)) from None
    h, w = result.size_hw
    t, gh, gw = result.grid
    typer.echo(f"{result.frames} frames of {w}x{h} at {result.fps:g} fps, {opts.method} maps of {result.windows} "
               f"windows of {result.window} frames every {result.stride} ({t}x{gh}x{gw} tubelets) with {vit.name} in "
               f"{result.total_seconds:.1f} s ({result.frames / max(result.model_seconds, 1e-9):.2f} frames/s through "
               "the model); wrote " + ", ".join(str(p) for p in result.outputs))

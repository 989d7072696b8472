"""What verifying an upload costs: time and peak memory of `verify_image` per image.

    .venv/bin/python bench/image_verification.py

Images are made here with Pillow: photo-like content (gradients under seeded noise) sized
to about 200 KB and 5 MiB, carrying EXIF with GPS and an ICC profile so there is something
to strip; and images at the pixel limit (25 megapixels), where decoding dominates. For
each: the median time of `verify_image` (walk + strip + full decode), of the container walk
alone, and of Pillow alone opening and decoding the same bytes; the longest pause another
Python thread sees while it runs (Pillow releases the GIL while decoding); and the peak
RSS one verification adds, measured in a fresh process. Nothing is asserted; the figures
are printed.
"""

from __future__ import annotations

import functools
import io
import os
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import PIL
from avatarsigner_server.verification import _jpeg, _png, _webp
from avatarsigner_server.verification.images import (
    ImageFormat,
    Limits,
    VerifiedImage,
    verify_image,
)
from PIL import Image, ImageCms

LIMITS = Limits(max_pixels=25_000_000, max_side=8192, max_frames=1)
KIB, MIB = 1024, 1024 * 1024
STRIP = {ImageFormat.JPEG: _jpeg.strip, ImageFormat.PNG: _png.strip, ImageFormat.WEBP: _webp.strip}


@dataclass(frozen=True)
class Case:
    name: str
    content_type: str
    data: bytes


def photo(size: tuple[int, int], seed: int = 7) -> Image.Image:
    """Gradients with seeded noise: compresses like a photo, the same on every run."""
    rng = random.Random(seed)
    noise = Image.frombytes("L", size, rng.randbytes(size[0] * size[1]))
    bands = [
        Image.linear_gradient("L").resize(size),
        Image.radial_gradient("L").resize(size),
        Image.linear_gradient("L").rotate(90).resize(size),
    ]
    return Image.merge("RGB", [Image.blend(band, noise, 0.35) for band in bands])


def metadata() -> dict[str, object]:
    exif = Image.Exif()
    exif[0x010F], exif[0x0110], exif[0x0112] = "Camera", "Model 1", 6
    gps = exif.get_ifd(0x8825)
    gps[1], gps[2], gps[3], gps[4] = "N", (48.0, 51.0, 29.6), "E", (2.0, 17.0, 40.2)
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    return {"exif": exif, "icc_profile": icc}


def encoded(image: Image.Image, image_format: str, **params: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, image_format, **params)
    return buffer.getvalue()


def sized(target: int, image_format: str, **params: object) -> bytes:
    """A photo encoded to about `target` bytes (its side corrected over a few tries)."""
    side = 512
    for _ in range(3):
        data = encoded(photo((side * 4 // 3, side)), image_format, **params)
        side = int(side * (target / len(data)) ** 0.5)
    return encoded(photo((side * 4 // 3, side)), image_format, **params)


def cases() -> list[Case]:
    extra = metadata()
    limit = (5000, 5000)
    flat = Image.linear_gradient("L").resize(limit).convert("RGB")
    return [
        Case("JPEG ~200 KB", "image/jpeg", sized(200 * KIB, "JPEG", quality=90, **extra)),
        Case("JPEG ~5 MiB", "image/jpeg", sized(5 * MIB, "JPEG", quality=90, **extra)),
        Case("PNG ~200 KB", "image/png", sized(200 * KIB, "PNG", **extra)),
        Case("PNG ~5 MiB", "image/png", sized(5 * MIB, "PNG", **extra)),
        Case("WebP ~200 KB", "image/webp", sized(200 * KIB, "WEBP", quality=90, **extra)),
        Case("WebP ~5 MiB", "image/webp", sized(5 * MIB, "WEBP", quality=95, **extra)),
        Case("JPEG 25 MP progressive", "image/jpeg", encoded(flat, "JPEG", progressive=True)),
        Case("PNG 25 MP", "image/png", encoded(flat, "PNG")),
        Case("WebP 25 MP lossless", "image/webp", encoded(flat, "WEBP", lossless=True)),
    ]


def decode_only(data: bytes) -> None:
    with Image.open(io.BytesIO(data)) as image:
        image.load()


def medians(actions: list[Callable[[], object]], budget: float = 1.0) -> list[float]:
    """Median seconds of each action, run in interleaved rounds so that load from elsewhere
    on the machine hits all of them alike."""
    for action in actions:
        action()  # warm up
    times: list[list[float]] = [[] for _ in actions]
    spent = time.perf_counter()
    while len(times[0]) < 3 or (time.perf_counter() - spent < budget and len(times[0]) < 30):
        for action, samples in zip(actions, times, strict=True):
            start = time.perf_counter()
            action()
            samples.append(time.perf_counter() - start)
    return [statistics.median(samples) for samples in times]


def longest_pause(action: Callable[[], object]) -> float:
    """The longest another Python thread waits for the GIL while `action` runs: what an
    event loop would feel if the action ran in a worker thread."""
    gaps: list[float] = []
    done = threading.Event()

    def tick() -> None:
        last = time.perf_counter()
        while not done.is_set():
            time.sleep(0.0005)
            now = time.perf_counter()
            gaps.append(now - last)
            last = now

    ticker = threading.Thread(target=tick)
    ticker.start()
    try:
        action()
    finally:
        done.set()
        ticker.join()
    return max(gaps, default=0.0)


def peak_rss_added(case: Case) -> int:
    """Bytes one `verify_image` adds to the peak RSS of a fresh process."""
    with tempfile.NamedTemporaryFile(suffix=".bin", delete=False) as file:
        file.write(case.data)
    try:
        out = subprocess.run(
            [sys.executable, __file__, "--peak", file.name, case.content_type],
            check=True,
            capture_output=True,
            text=True,
        )
    finally:
        os.unlink(file.name)
    return int(out.stdout)


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise LookupError(field)


def _peak_child(path: str, content_type: str) -> None:
    data = Path(path).read_bytes()
    verify_image(data[:64], content_type, LIMITS)  # imports and first-use costs
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
    before = _status_kib("VmHWM")
    result = verify_image(data, content_type, LIMITS)
    assert isinstance(result, VerifiedImage), result
    print((_status_kib("VmHWM") - before) * KIB)


def _milliseconds(seconds: float) -> str:
    return f"{seconds * 1e3:.2f} ms" if seconds >= 1e-3 else f"{seconds * 1e6:.0f} us"


def main() -> None:
    print(
        f"Pillow {PIL.__version__}, {os.cpu_count()} CPUs, load average "
        f"{os.getloadavg()[0]:.1f}; {LIMITS}"
    )
    header = (
        f"{'image':<24} {'bytes':>10} {'size':>11} {'verify':>10} {'walk+strip':>11} "
        f"{'Pillow alone':>12} {'max stall':>10} {'peak RSS +':>11}"
    )
    print(header)
    print("-" * len(header))
    for case in cases():
        result = verify_image(case.data, case.content_type, LIMITS)
        assert isinstance(result, VerifiedImage), (case.name, result)
        verify, strip, decode = medians(
            [
                functools.partial(verify_image, case.data, case.content_type, LIMITS),
                functools.partial(STRIP[result.format], case.data, LIMITS),
                functools.partial(decode_only, case.data),
            ]
        )
        pause = longest_pause(functools.partial(verify_image, case.data, case.content_type, LIMITS))
        print(
            f"{case.name:<24} {len(case.data):>10,} {result.width:>5}x{result.height:<5} "
            f"{_milliseconds(verify):>10} {_milliseconds(strip):>11} {_milliseconds(decode):>12} "
            f"{_milliseconds(pause):>10} {peak_rss_added(case) / MIB:>7.1f} MiB"
        )
    print(
        "\nverify = walk+strip + Pillow decoding the stripped bytes; Pillow alone = Pillow "
        "opening and decoding the upload as it came; max stall = the longest another Python "
        "thread waited during one verify (the GIL, and the machine's own scheduling)."
    )


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--peak":
        _peak_child(sys.argv[2], sys.argv[3])
    else:
        main()

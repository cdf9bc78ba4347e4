"""Our Label Studio files through a real Label Studio server and back, pixel for pixel (issue 31.5).

    OMP_NUM_THREADS=1 .venv/bin/python -m benchmarks.label_studio_roundtrip [--label-studio PATH] [--tasks N]

Installs nothing: give the `label-studio` executable (default: the one on PATH; it may live in a venv of its own).
Builds a small dataset in a temporary folder (N images with block masks standing for the model's predictions),
writes `suggest --export label-studio`'s files from them, starts Label Studio on 127.0.0.1 with a throw-away data
folder, a user and a legacy API token and local-files serving of the data root, creates a project from our
labeling_config.xml, imports tasks.json, checks each task's pre-annotation and that its image is served, stores an
annotation per task (the pre-annotation with one region relabelled), exports the project as JSON, runs
`allspark import-labels` on it and compares every mask with what was stored. Stops the server itself, whatever
happens, within --timeout seconds in all. Prints one summary line (tasks, pixels equal, seconds per phase)."""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
from PIL import Image

from allspark.data.io import read_mask
from allspark.labeling.classes import ClassSet
from allspark.labeling.export import CONFIG, TASKS, Predicted, write_exports
from benchmarks.timing import ROOT

NAMES = ("sky", "building", "road", "car")
PALETTE = np.array([(128, 128, 128), (128, 0, 0), (128, 64, 128), (64, 0, 128)], np.uint8)
TOKEN, USER = "allspark0roundtrip0token", "bench@example.com"


def make_dataset(root: Path, count: int, size: tuple[int, int]) -> list[Predicted]:
    """ROOT/images/t{i}.png, classes.txt, splits/{labeled,unlabeled}.txt; the block masks standing for the
    predictions (every class present, some pixels undrawn)."""
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    (root / "classes.txt").write_text("".join(f"{n} {r} {g} {b}\n" for n, (r, g, b) in zip(NAMES, PALETTE)))
    width, height = size
    predicted = []
    for i in range(count + 1):
        Image.fromarray(rng.integers(0, 255, (height, width, 3), np.uint8)).save(root / f"images/t{i}.png")
        mask = np.repeat(np.arange(len(NAMES), dtype=np.uint8), -(-height // len(NAMES)))[:height, None]
        mask = np.repeat(mask, width, axis=1)
        mask[rng.integers(0, height // 2):, rng.integers(0, width // 2):][:20, :30] = (i + 1) % len(NAMES)
        mask[:3, :5] = 255
        if i == 0:
            Image.fromarray(mask).save(root / "masks/t0.png")
        else:
            predicted.append(Predicted(f"images/t{i}.png", mask, 1.0 - i / (count + 1)))
    (root / "splits").mkdir()
    (root / "splits/labeled.txt").write_text("images/t0.png masks/t0.png\n")
    (root / "splits/unlabeled.txt").write_text("".join(f"{p.image} masks/{Path(p.image).stem}.png\n"
                                                        for p in predicted))
    return predicted


class Server:
    """A Label Studio process on 127.0.0.1 and its HTTP API with the legacy token."""

    def __init__(self, executable: str, data_dir: Path, document_root: Path, deadline: float):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.url, self.deadline = f"http://127.0.0.1:{self.port}", deadline
        env = {**os.environ, "LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED": "true",
               "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT": str(document_root), "LABEL_STUDIO_BASE_DATA_DIR": str(data_dir),
               "SENTRY_DSN": "", "FRONTEND_SENTRY_DSN": ""}  # no error reports sent out (sentry-sdk 3 refuses its options)
        self.log = open(data_dir / "server.log", "w")
        self.process = subprocess.Popen(
            [executable, "start", "--no-browser", "--data-dir", str(data_dir), "--internal-host", "127.0.0.1",
             "--port", str(self.port), "--username", USER, "--password", "roundtrip-pass", "--user-token", TOKEN,
             "--enable-legacy-api-token"], env=env, stdout=self.log, stderr=subprocess.STDOUT,
            start_new_session=True)

    def call(self, method: str, path: str, body=None, raw: bool = False):
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.url + path, data, method=method,
                                         headers={"Authorization": f"Token {TOKEN}", "Content-Type": "application/json"})
        timeout = max(1.0, min(120.0, self.deadline - time.monotonic()))
        with urllib.request.urlopen(request, timeout=timeout) as response:
            payload = response.read()
        return payload if raw else json.loads(payload or b"null")

    def wait_ready(self) -> None:
        while time.monotonic() < self.deadline:
            if self.process.poll() is not None:
                self.log.flush()
                tail = Path(self.log.name).read_text().strip().splitlines()[-3:]
                raise RuntimeError(f"label-studio exited with {self.process.returncode}: {' | '.join(tail)}")
            try:
                self.call("GET", "/api/projects/")
                return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                time.sleep(2)
        raise TimeoutError("label-studio did not answer before the deadline")

    def stop(self) -> None:
        """SIGTERM to its process group, SIGKILL after 20 s."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self.log.close()


def relabelled(result: list[dict]) -> tuple[list[dict], int, int]:
    """The pre-annotation with its first region given the next class's name: (regions, class from, class to)."""
    first = result[0]
    old = NAMES.index(first["value"]["brushlabels"][0])
    new = (old + 1) % len(NAMES)
    changed = {**first, "value": {**first["value"], "brushlabels": [NAMES[new]]}}
    return [changed, *result[1:]], old, new


def annotate(server: Server, project: int, predicted: list[Predicted], root: Path) -> dict[str, np.ndarray]:
    """Check each task's pre-annotation and image, store the relabelled annotation; {image: expected mask}."""
    tasks = server.call("GET", f"/api/tasks/?project={project}&page_size=1000&fields=all")
    tasks = tasks["tasks"] if isinstance(tasks, dict) else tasks
    by_image = {p.image: p for p in predicted}
    expected = {}
    for task in tasks:
        image = task["data"]["allspark_image"]
        predictions = server.call("GET", f"/api/predictions/?task={task['id']}")
        result = predictions[0]["result"]
        present = sorted(int(k) for k in np.unique(by_image[image].mask) if k != 255)
        assert sorted(NAMES.index(r["value"]["brushlabels"][0]) for r in result) == present, image
        served = server.call("GET", "/data/local-files/?d=" + image, raw=True)
        assert served == (root / image).read_bytes(), f"{image} not served as it is on disk"
        regions, old, new = relabelled(result)
        server.call("POST", f"/api/tasks/{task['id']}/annotations/", {"result": regions, "was_cancelled": False})
        mask = by_image[image].mask.copy()
        mask[by_image[image].mask == old] = new
        expected[image] = mask
    return expected


def roundtrip(executable: str, count: int, size: tuple[int, int], timeout: float, work: Path) -> dict:
    deadline, started = time.monotonic() + timeout, time.monotonic()
    root = work / "data"
    predicted = make_dataset(root, count, size)
    out = work / "suggest"
    write_exports(out, ["label-studio"], [p.image for p in predicted], iter(predicted),
                  ClassSet.of(NAMES, PALETTE), "roundtrip")
    (work / "ls").mkdir()
    server = Server(executable, work / "ls", root, deadline)
    seconds = {}
    try:
        server.wait_ready()
        seconds["server start"] = time.monotonic() - started
        phase = time.monotonic()
        project = server.call("POST", "/api/projects/", {"title": "allspark roundtrip",
                                                         "label_config": (out / CONFIG).read_text()})["id"]
        server.call("POST", "/api/storages/localfiles/", {"project": project, "path": str(root / "images"),
                                                          "title": "images", "use_blob_urls": False})
        server.call("POST", f"/api/projects/{project}/import", json.loads((out / TASKS).read_text()))
        expected = annotate(server, project, predicted, root)
        export = server.call("GET", f"/api/projects/{project}/export?exportType=JSON&download_all_tasks=true",
                             raw=True)
        (work / "export.json").write_bytes(export)
        seconds["API (project, import, check, annotate, export)"] = time.monotonic() - phase
    finally:
        server.stop()
    phase = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "allspark", "import-labels", str(work / "export.json"), "--root",
                           str(root), "--out", str(root / "splits"), "--no-progress"], capture_output=True, text=True,
                          timeout=max(1.0, deadline - time.monotonic()), cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
    assert done.returncode == 0, done.stderr
    seconds["import-labels"] = time.monotonic() - phase
    equal = sum(int((read_mask(root / f"masks/{Path(image).stem}.png") == mask).sum())
                for image, mask in expected.items())
    total = sum(mask.size for mask in expected.values())
    moved = len((root / "splits/labeled.txt").read_text().splitlines()) - 1
    return {"tasks": len(expected), "moved": moved, "pixels_equal": equal, "pixels": total,
            "seconds": {k: round(v, 1) for k, v in seconds.items()}, "total_s": round(time.monotonic() - started, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--label-studio", default=shutil.which("label-studio"), help="the label-studio executable")
    parser.add_argument("--tasks", type=int, default=8)
    parser.add_argument("--size", default="480x360", help="image width x height")
    parser.add_argument("--timeout", type=float, default=600, help="seconds for the whole round trip")
    args = parser.parse_args()
    if not args.label_studio:
        sys.exit("label-studio not found on PATH; pass --label-studio PATH (it is not installed by this script)")
    width, height = (int(v) for v in args.size.split("x"))
    with tempfile.TemporaryDirectory(prefix="ls_roundtrip_") as work:
        figures = roundtrip(args.label_studio, args.tasks, (width, height), args.timeout, Path(work))
    print(json.dumps(figures))
    if figures["pixels_equal"] != figures["pixels"] or figures["moved"] != figures["tasks"]:
        sys.exit("round trip changed pixels or lost images")


if __name__ == "__main__":
    main()

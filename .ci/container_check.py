"""Serve a built image's rootfs as Docker would, and check it as a user would (run by .ci/container.sh).

The image's entrypoint and environment run in a PID namespace of their own (the entrypoint is PID 1), as
the image's user, with /cache a volume owned by that user (a named volume's ownership), a model folder and
a photo folder mounted, on the host network. Then:

1. the image's own HEALTHCHECK command reports ready;
2. a real gRPC request with good and broken images gets an embedding or an error for each Document;
3. SIGTERM to PID 1 while a request of large photos is in flight: every embedding comes back, PID 1 exits 0
   by itself, and the port is free.
4. The README's host cache: ``--user`` the owner of a host folder bind-mounted at /cache, which holds a model
   that an earlier download left there; it is served by its hub name, offline, and stops with exit 0.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import threading
import time
from io import BytesIO
from pathlib import Path

import numpy as np
import torch
from docarray import DocList
from jina import Client
from PIL import Image
from skimage import data as skimage_data
from transformers import CLIPImageProcessorPil, CLIPVisionConfig, CLIPVisionModelWithProjection

from clip_image_encoder.service.documents import ImageDocument

PORT = 51000
"""The image's own port (its CMD and HEALTHCHECK): the check runs the image unchanged."""
LARGE_PHOTOS = 48
HOST_USER = "1000:1000"
"""``--user "$(id -u):$(id -g)"`` of a typical desktop user, who owns the host cache (not in the image's passwd)."""
HUB_NAME = "tiny-org/tiny-clip"
"""12-megapixel JPEGs in the request that SIGTERM interrupts: several seconds of decoding on 2 cores."""


def prepare_volumes(work: Path, uid: int) -> dict[str, Path]:
    """The cache (owned by the image's user, as a named volume is), a tiny CLIP folder and large photos."""
    cache, model, photos = work / "cache", work / "models" / "tiny", work / "photos"
    for folder in (cache, model, photos):
        folder.mkdir(parents=True)
    os.chown(cache, uid, uid)
    torch.manual_seed(0)
    config = CLIPVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, projection_dim=16
    )
    CLIPVisionModelWithProjection(config).save_pretrained(model)
    CLIPImageProcessorPil().save_pretrained(model)
    subprocess.run(["chmod", "-R", "a+rX", str(work / "models")], check=True)  # save_pretrained writes 0600
    sources = [skimage_data.astronaut(), skimage_data.coffee(), skimage_data.chelsea(), skimage_data.rocket()]
    for index in range(LARGE_PHOTOS):
        photo = Image.fromarray(sources[index % len(sources)]).rotate(index * 7).resize((4000, 3000))
        photo.save(photos / f"{index}.jpg", quality=95)
    for folder in (work, work / "models", photos):
        folder.chmod(0o755)
    return {"/cache": cache, "/models": work / "models", "/photos": photos}


def prepare_host_cache(work: Path, model: Path) -> Path:
    """A host folder owned by HOST_USER that holds MODEL in the hub cache's layout, as a download leaves it."""
    host_cache, revision = work / "host-cache", "0" * 40
    repository = host_cache / "hub" / f"models--{HUB_NAME.replace('/', '--')}"
    shutil.copytree(model, repository / "snapshots" / revision)
    (repository / "refs").mkdir()
    (repository / "refs" / "main").write_text(revision)
    subprocess.run(["chown", "-R", HOST_USER, str(host_cache)], check=True)
    return host_cache


def start(
    rootfs: Path, config: dict, volumes: dict[str, Path], args: list[str], user: str = "", env: tuple[str, ...] = ()
) -> subprocess.Popen:
    """``docker run [--user USER] [-e ENV] IMAGE ARGS``: the entrypoint with ARGS (they replace CMD) as PID 1 of a
    new PID namespace, with HOME as Docker sets it (the image's ENV, else the user's home in its passwd, else /)."""
    user = user or config["User"] or "0"
    uid, _, gid = user.partition(":")
    home = [] if any(line.startswith("HOME=") for line in config["Env"]) else [f"HOME={home_of(rootfs, uid)}"]
    env = [*config["Env"], *home, *env, "JINA_DEFAULT_HOST=127.0.0.1"]  # loopback only
    command = shlex.join([*config["Entrypoint"], *args])
    steps = [f"mount -t proc proc {rootfs}/proc", f"mount --rbind /dev {rootfs}/dev"]
    for inside, outside in volumes.items():
        steps += [f"mkdir -p {rootfs}{inside}", f"mount --bind {outside} {rootfs}{inside}"]
    workdir = config.get("WorkingDir") or "/"
    steps.append(
        f"exec chroot --userspec={uid}:{gid or uid} {rootfs} env -i {shlex.join(env)} "
        f"sh -c {shlex.quote(f'cd {workdir} && exec {command}')}"
    )
    return subprocess.Popen(["unshare", "--pid", "--fork", "--mount", "sh", "-c", " && ".join(steps)])


def remove_container(launcher: subprocess.Popen) -> None:
    """Kill what is left of a run: its PID 1 first (killing ``unshare`` alone would orphan it), which ends the
    whole PID namespace, then ``unshare``."""
    if launcher.poll() is not None:
        return
    with contextlib.suppress(RuntimeError, ProcessLookupError):
        os.kill(pid_one(launcher), signal.SIGKILL)
    launcher.kill()
    launcher.wait()


def home_of(rootfs: Path, uid: str) -> str:
    for entry in (rootfs / "etc" / "passwd").read_text().splitlines():
        fields = entry.split(":")
        if fields[2] == uid:
            return fields[5]
    return "/"


def pid_one(launcher: subprocess.Popen) -> int:
    """The host's pid of the namespace's PID 1 (the child that ``unshare --fork`` made)."""
    for _ in range(100):
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == launcher.pid:
                    return int(stat.parent.name)
            except (OSError, ValueError, IndexError):
                continue
        time.sleep(0.1)
    raise RuntimeError("no PID 1 under unshare")


def healthcheck(rootfs: Path, config: dict, user: str) -> bool:
    """The image's HEALTHCHECK command, run in the image's filesystem as the container's user."""
    test = config["Healthcheck"]["Test"]
    assert test[0] == "CMD", test
    uid, _, gid = user.partition(":")
    command = ["chroot", f"--userspec={uid}:{gid or uid}", str(rootfs), "env", "-i", *config["Env"], *test[1:]]
    return subprocess.run(command, capture_output=True, timeout=60).returncode == 0


def port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0


def check_mixed_request(client: Client) -> None:
    encoded = BytesIO()
    Image.fromarray(skimage_data.chelsea()).save(encoded, "PNG")
    docs = DocList[ImageDocument](
        [
            ImageDocument(bytes_=encoded.getvalue()),
            ImageDocument(bytes_=b"not an image"),
            ImageDocument(url="/etc/passwd"),
            ImageDocument(url="/photos/0.jpg"),
        ]
    )
    answer = client.post("/", inputs=docs, return_type=DocList[ImageDocument])
    assert [doc.id for doc in answer] == [doc.id for doc in docs]
    assert answer[0].error is None and np.asarray(answer[0].embedding).shape == (16,)
    assert "not a decodable image" in answer[1].error
    assert "outside the folders this server reads" in answer[2].error
    assert answer[3].error is None and np.asarray(answer[3].embedding).shape == (16,)
    print("mixed request: 2 embedded, 2 errors of their own (undecodable, refused path)")


def check_graceful_stop(client: Client, launcher: subprocess.Popen, pid: int) -> None:
    docs = DocList[ImageDocument]([ImageDocument(url=f"/photos/{index}.jpg") for index in range(LARGE_PHOTOS)])
    answer: dict = {}

    def post() -> None:
        try:
            answer["docs"] = client.post("/", inputs=docs, request_size=len(docs), return_type=DocList[ImageDocument])
        except Exception as exc:
            answer["error"] = repr(exc)
        answer["at"] = time.monotonic()

    thread = threading.Thread(target=post)
    thread.start()
    time.sleep(1.0)
    signalled = time.monotonic()
    os.kill(pid, signal.SIGTERM)
    thread.join(timeout=120)
    status = launcher.wait(timeout=60)
    stopped = time.monotonic() - signalled
    assert "docs" in answer, answer.get("error")
    assert answer["at"] > signalled, "the request was not in flight when SIGTERM went"
    assert all(doc.error is None and doc.embedding is not None for doc in answer["docs"])
    assert status == 0, f"PID 1 exited with {status}"
    assert port_is_free(PORT)
    print(
        f"SIGTERM to PID 1 with {LARGE_PHOTOS} photos of 12 MP in flight: all answered {answer['at'] - signalled:.1f} s"
        f" after the signal; PID 1 exited 0 after {stopped:.1f} s; port {PORT} free"
    )


def wait_healthy(launcher: subprocess.Popen, rootfs: Path, config: dict, user: str, began: float) -> int:
    """Wait for the image's HEALTHCHECK to pass; check that the entrypoint is PID 1 as USER; its host pid."""
    pid = pid_one(launcher)
    deadline = time.monotonic() + 300
    while not healthcheck(rootfs, config, user):
        assert launcher.poll() is None, "the container exited during start-up"
        assert time.monotonic() < deadline, "not healthy within 300 s"
        time.sleep(2)
    print(f"healthy {time.monotonic() - began:.1f} s after start (the image's HEALTHCHECK command)")
    status = Path(f"/proc/{pid}/status").read_text()  # now, not at start: chroot changes the user as it runs
    nspid = next(line for line in status.splitlines() if line.startswith("NSpid:")).split()
    uid = next(line for line in status.splitlines() if line.startswith("Uid:")).split()[1]
    assert nspid[-1] == "1" and uid == user.partition(":")[0], (nspid, uid)
    print(f"PID 1 of its namespace (host pid {pid}), uid {uid}: {' '.join(config['Entrypoint'])}")
    return pid


def check_host_cache(rootfs: Path, config: dict, volumes: dict[str, Path], host_cache: Path) -> None:
    """The README's ``docker run --user "$(id -u):$(id -g)" -v ~/.cache/huggingface:/cache``, offline."""
    began = time.monotonic()
    launcher = start(
        rootfs,
        config,
        {"/cache": host_cache, "/photos": volumes["/photos"]},
        ["--model", HUB_NAME, "--local-uri-roots", "/photos"],
        user=HOST_USER,
        env=("HF_HUB_OFFLINE=1",),
    )
    try:
        pid = wait_healthy(launcher, rootfs, config, HOST_USER, began)
        answer = Client(host="127.0.0.1", port=PORT).post(
            "/", inputs=DocList[ImageDocument]([ImageDocument(url="/photos/0.jpg")]), return_type=DocList[ImageDocument]
        )
        assert answer[0].error is None and np.asarray(answer[0].embedding).shape == (16,), answer[0].error
        signalled = time.monotonic()
        os.kill(pid, signal.SIGTERM)
        status = launcher.wait(timeout=60)
        assert status == 0 and port_is_free(PORT), f"PID 1 exited with {status}"
        print(
            f"host cache: --user {HOST_USER}, {HUB_NAME} served from a bind-mounted hub cache offline; "
            f"SIGTERM when idle: exit 0 after {time.monotonic() - signalled:.1f} s"
        )
    finally:
        remove_container(launcher)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rootfs", type=Path, required=True)
    parser.add_argument("--second-rootfs", type=Path, required=True, help="a fresh container of the same image")
    parser.add_argument("--image-config", type=Path, required=True, help="buildah inspect --type image, as JSON")
    parser.add_argument("--work", type=Path, required=True, help="an empty folder for the volumes")
    args = parser.parse_args()
    config = json.loads(args.image_config.read_text())["Docker"]["config"]
    assert config["StopSignal"] == "SIGTERM" and config["User"] == "10001", config
    assert port_is_free(PORT), f"port {PORT} is taken: the check runs the image on its own port"
    volumes = prepare_volumes(args.work, int(config["User"]))
    began = time.monotonic()
    launcher = start(args.rootfs, config, volumes, ["--model", "/models/tiny", "--local-uri-roots", "/photos"])
    try:
        pid = wait_healthy(launcher, args.rootfs, config, config["User"], began)
        client = Client(host="127.0.0.1", port=PORT)
        check_mixed_request(client)
        check_graceful_stop(client, launcher, pid)
    finally:
        remove_container(launcher)
    host_cache = prepare_host_cache(args.work, volumes["/models"] / "tiny")
    check_host_cache(args.second_rootfs, config, volumes, host_cache)


if __name__ == "__main__":
    main()

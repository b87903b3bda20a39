"""The real Dagster webserver, bound to localhost, lists every asset with its slide partitions."""

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # a real webserver
ROOT = Path(__file__).resolve().parents[2]
QUERY = "{ assetNodes { assetKey { path } partitionDefinition { name } partitionKeysByDimension { partitionKeys } } }"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ui_lists_assets_with_partitions(tiny_cohort, tmp_path):
    home = tmp_path / "home"
    r = subprocess.run([sys.executable, "-m", "sthelar_cli", "--home", str(home), "slides", "add",
                        "--manifest", str(tiny_cohort / "manifest.yaml")], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    port = _free_port()
    env = {**os.environ, "DAGSTER_HOME": str(home / "dagster"), "STHELAR_HOME": str(home)}
    proc = subprocess.Popen([sys.executable, "-m", "dagster_webserver", "-w", "workspace.yaml", "-h", "127.0.0.1",
                             "-p", str(port)], cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        data = None
        deadline = time.time() + 180
        while time.time() < deadline:
            try:
                req = urllib.request.Request(f"http://127.0.0.1:{port}/graphql", data=json.dumps({"query": QUERY}).encode(),
                                             headers={"Content-Type": "application/json"})
                data = json.loads(urllib.request.urlopen(req, timeout=10).read())
                if data.get("data", {}).get("assetNodes"):
                    break
            except OSError:
                time.sleep(1)
        assert data and data.get("data"), data
        nodes = {"/".join(n["assetKey"]["path"]): n for n in data["data"]["assetNodes"]}
        assert {"xenium_slide", "he_image"} <= set(nodes)
        for name in ("xenium_slide", "he_image"):
            assert nodes[name]["partitionDefinition"]["name"] == "slides"
            assert nodes[name]["partitionKeysByDimension"][0]["partitionKeys"] == ["tiny"]
    finally:
        proc.terminate()
        proc.wait(30)

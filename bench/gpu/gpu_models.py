"""The models of a GPU run: the carried local models adopted (or rebuilt), and the benchmark models built there.

    python3 bench/gpu/gpu_models.py OUT_JSON          (run_all.sh's setup step)

Local models (`rewardline models build`, .cache/models): about 11 MB, carried from this machine rather than
rebuilt on the GPU machine, where the build (one thread by design, ~2-3 minutes) would take a fifth of the GPU
budget. Their build.json key covers the builder's code and config *and* the torch/transformers/tokenizers
versions, so on a machine with other versions `ensure_models` (which the tests call) would rebuild them. The
carried build is adopted instead when its key equals the key this checkout computes *with the versions recorded
in the build*: then only the library versions differ, and the manifest is rewritten with this machine's key (the
versions it was built with kept under ``built_with``). Every GPU-vs-CPU comparison runs both sides on the GPU
machine from the same files, so where the files were trained does not matter. A carried build of other code is
rebuilt (slow, and said so).

Benchmark models (.cache/bench), random weights, built here in seconds: the anchor-size reward model of
bench/common.py (hidden 256, 4 layers, ~3.4M parameters), the GPU-bound one (hidden 1024, 16 layers, ~200M
parameters), the 5-head ensemble of bench/uncertainty_cost.py and the judge-size causal LM of
bench/judge_throughput.py.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from unittest import mock

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))


def adopt_or_build(out: Path) -> dict:
    """Adopts a carried models build made by this code and config under other library versions, else builds."""
    from rewardline.trainer.local_models import build

    config = build.ModelsBuildConfig()
    manifest = build.read_manifest(out)
    started = time.perf_counter()
    if manifest is not None and build.is_current(out, config):
        return {"models": "current", "seconds": 0.0}
    if manifest is not None:
        recorded = manifest.get("versions", {})
        with mock.patch.object(build, "library_versions", lambda: recorded):
            same_code = manifest.get("key") == build.build_key(config)
        if same_code:
            manifest["built_with"] = recorded
            manifest["versions"] = build.library_versions()
            manifest["key"] = build.build_key(config)
            (out / build.MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
            assert build.is_current(out, config)
            return {"models": "adopted", "built_with": recorded, "seconds": round(time.perf_counter() - started, 2)}
    print("the carried models are not this code's build: building them here (minutes)", flush=True)
    build.ensure_models(out, config)
    return {"models": "built here", "seconds": round(time.perf_counter() - started, 2)}


def main() -> int:
    out_json = Path(sys.argv[1])
    report = adopt_or_build(REPO / ".cache" / "models")
    print(f"local models: {report}", flush=True)

    from bench.common import BenchModel
    from bench.judge_throughput import bench_judge
    from bench.uncertainty_cost import ENSEMBLE_MEMBERS, ensemble_model

    cache = REPO / ".cache" / "bench"
    built = {}
    for size in ("anchor", "large"):
        started = time.perf_counter()
        model = BenchModel.load_or_build(cache, size)
        built[size] = {
            "path": str(model.path),
            "parameters": model.parameters,
            "seconds": time.perf_counter() - started,
        }
        if size == "anchor":
            started = time.perf_counter()
            path = ensemble_model(model, cache, ENSEMBLE_MEMBERS)
            built["ensemble"] = {"path": str(path), "seconds": time.perf_counter() - started}
    started = time.perf_counter()
    built["judge"] = {"path": str(bench_judge(cache)), "seconds": time.perf_counter() - started}
    for name, b in built.items():
        print(f"bench model {name}: {b}", flush=True)
    out_json.write_text(json.dumps({"local_models": report, "bench_models": built}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

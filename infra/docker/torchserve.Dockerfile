# TorchServe serving model_store/embedding.mar (build it first: make mar). Follows the official
# pytorch/torchserve image's conventions: user model-server, /home/model-server with model-store/ and
# config.properties. Build from the repository root:
#   docker build -f infra/docker/torchserve.Dockerfile -t photo-torchserve .
# CONFIG picks the TorchServe config: config.container.properties (token auth on; compose, ECS,
# Kubernetes) or config.sagemaker.properties (SageMaker: /ping and /invocations on 8080).
FROM python:3.11.11-slim-bookworm

ARG CONFIG=config.container.properties
# PHOTO_THREADS: threads per model worker; the configs run 2 workers, so 1 each on 2 cores (raise both
# on larger machines: docs/PERFORMANCE.md).
ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    TEMP=/home/model-server/tmp \
    PHOTO_THREADS=1

RUN apt-get update \
    && apt-get install -y --no-install-recommends openjdk-17-jre-headless=17.* \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --create-home --home-dir /home/model-server --uid 1000 model-server

COPY infra/docker/requirements-torchserve.txt /tmp/requirements.txt
RUN pip install --index-url https://download.pytorch.org/whl/cpu torch==2.14.1 torchvision==0.29.1 \
    && pip install -r /tmp/requirements.txt

WORKDIR /home/model-server
COPY --chown=model-server:model-server model_store/embedding.mar model-store/embedding.mar
COPY --chown=model-server:model-server infra/torchserve/${CONFIG} config.properties
COPY --chown=model-server:model-server infra/torchserve/ping.py ping.py
COPY --chown=model-server:model-server infra/torchserve/publish_key.py publish_key.py
COPY --chown=model-server:model-server infra/torchserve/start.py start.py
RUN mkdir -p keys inference-key tmp logs && chown model-server:model-server keys inference-key tmp logs \
    && if [ "${CONFIG}" = "config.sagemaker.properties" ]; then \
         mkdir -p /opt/ml/model && cp model-store/embedding.mar /opt/ml/model/ \
         && chown -R model-server:model-server /opt/ml; fi

USER 1000:1000
# Only the inference API is published; management (8081) listens on loopback, metrics (8082) are
# scraped from inside the cluster.
EXPOSE 8080
# /ping needs the inference token too (TorchServe 0.12): ping.py sends it. Under SageMaker (token off,
# no key file) SageMaker probes /ping itself.
HEALTHCHECK --interval=15s --timeout=5s --start-period=120s \
    CMD ["python", "/home/model-server/ping.py"]
# TorchServe writes key_file.json (inference, management and token-API keys) into its working directory,
# keys/, which stays private to this container; publish_key.py copies the inference key alone into
# inference-key/, the only key volume the gateway mounts (it cannot unregister or scale the model).
# LOG_LOCATION/METRICS_LOCATION and TEMP keep every write under logs/ and tmp/ (volumes where the root
# filesystem is read-only).
ENV LOG_LOCATION=/home/model-server/logs \
    METRICS_LOCATION=/home/model-server/logs
WORKDIR /home/model-server/keys
# SageMaker starts a model container as `docker run IMAGE serve`, replacing CMD: start.py takes "serve" (or
# nothing) to mean "run TorchServe with config.properties", whose model_store is this image's model-store/
# or, in the SageMaker build, /opt/ml/model where SageMaker unpacks ModelDataUrl.
ENTRYPOINT ["python", "/home/model-server/start.py"]
CMD ["serve"]

# cachedaemon in a container (docs/deploy-docker.md):
#   docker build -t cachedaemon .
#   docker run -p 127.0.0.1:8470:8470 -v cachedaemon-data:/var/lib/cachedaemon cachedaemon
# Settings come from CACHEDAEMON_<SECTION>_<NAME> variables (or flags after `serve`), e.g.
#   -e CACHEDAEMON_REMOTE_URL=s3://bucket -e CACHEDAEMON_REMOTE_S3_ENDPOINT=http://minio:9000
# A bind mount for the data must belong to uid:gid 10001:10001 (chown -R 10001:10001 DIR).
# docker-compose.yml runs it next to a moto S3 server.

# Pinned: Python 3.11 on Debian 12, by tag and digest. Another base (a mirror, a newer digest):
#   docker build --build-arg PYTHON_IMAGE=python:3.11.11-slim-bookworm@sha256:... .
ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm@sha256:081075da77b2b55c23c088251026fb69a7b2bf92471e491ff5fd75c192fd38e5
FROM ${PYTHON_IMAGE}

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# A fixed uid/gid, so that a bind-mounted data directory can be prepared on the host.
RUN groupadd --system --gid 10001 cachedaemon \
    && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/cachedaemon \
       --shell /usr/sbin/nologin cachedaemon \
    && install -d -o 10001 -g 10001 -m 0750 /var/lib/cachedaemon

# The dependencies, pinned by constraints.txt (scripts/lock), in a layer of their own: a change
# to the code does not reinstall them.
COPY constraints.txt /tmp/constraints.txt
RUN pip install --no-compile -r /tmp/constraints.txt

# The code, without dependencies (all pinned above); pip check fails the build if
# pyproject.toml asks for something constraints.txt lacks.
WORKDIR /src
COPY pyproject.toml README.md ./
COPY cachedaemon ./cachedaemon
RUN pip install --no-deps . && pip check && cd / && rm -rf /src /tmp/constraints.txt

# Listen on every interface inside the container; keep data (cache, logs, and the default
# file:// bucket) on the volume.
ENV CACHEDAEMON_SERVER_LISTEN=0.0.0.0:8470 \
    CACHEDAEMON_STORAGE_DATA_DIR=/var/lib/cachedaemon
VOLUME ["/var/lib/cachedaemon"]
EXPOSE 8470

USER 10001:10001
WORKDIR /var/lib/cachedaemon

# Follows the daemon's own server.listen (flag, environment or --config of process 1).
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
    CMD ["cachedaemon", "healthcheck", "--pid", "1"]

# SIGTERM: in-flight requests finish (up to server.shutdown_timeout), trackers are saved, exit 0.
STOPSIGNAL SIGTERM
ENTRYPOINT ["cachedaemon"]
CMD ["serve"]

# One image for the four services; the container command picks one: python -m services.<name>.
FROM python:3.11-slim AS build
# A compiler and OpenSSL's headers for the validator's compiled fast path (setup.py), in this stage
# only; libc6-dev is only a recommendation of gcc. Not pinned to versions (hadolint DL3008): the
# Debian mirror drops superseded versions, so a pin breaks the build at the next security update, and
# nothing of this stage reaches the final image.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev libssl-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml setup.py README.md ./
COPY shared shared
COPY services services
COPY examples examples
# The `cnx-keys` command (services/cli.py: migrate, and the management commands) and its client.
COPY cnx_keys cnx_keys
RUN pip install --no-cache-dir --prefix=/install .

FROM python:3.11-slim
COPY --from=build /install /usr/local
# The extension needs only the shared libcrypto, which the base image has for Python's own ssl module.
# setup.py lets a failed compile pass (the Python fallback); the image must not ship the slow path.
RUN python -B -c "import services.validator._fastpath"
RUN useradd --uid 10001 --create-home cnx && mkdir /data && chown cnx /data
USER 10001
WORKDIR /home/cnx
ENV CNX_DATA_DIR=/data CNX_HOST=0.0.0.0 PYTHONUNBUFFERED=1
EXPOSE 8080 8081 8082 8083
CMD ["python", "-m", "services.validator"]

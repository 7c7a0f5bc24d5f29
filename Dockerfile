# One image for the four services; the container command picks one: python -m services.<name>.
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY shared shared
COPY services services
COPY examples examples
RUN pip install --no-cache-dir --prefix=/install .

FROM python:3.11-slim
COPY --from=build /install /usr/local
RUN useradd --uid 10001 --create-home cnx && mkdir /data && chown cnx /data
USER 10001
WORKDIR /home/cnx
ENV CNX_DATA_DIR=/data CNX_HOST=0.0.0.0 PYTHONUNBUFFERED=1
EXPOSE 8080 8081 8082 8083
CMD ["python", "-m", "services.validator"]

# SmartEdit REST gateway: FastAPI + the async client SDK. No torch, diffusers or onnx.
#
#   docker build -f docker/gateway.Dockerfile -t smartedit-gateway:0.1.0 .
#   docker run --rm -p 8080:8080 smartedit-gateway:0.1.0 --triton smartedit:8001
FROM python:3.11-slim

WORKDIR /opt/smartedit
COPY client ./client
COPY gateway ./gateway
RUN python -m pip install --no-cache-dir ./client ./gateway \
 && python -c "import smartedit_gateway, smartedit_client" \
 && useradd --uid 1000 --create-home gateway

USER 1000
EXPOSE 8080
ENTRYPOINT ["smartedit-gateway", "--host", "0.0.0.0", "--port", "8080"]
CMD ["--triton", "smartedit:8001"]

# SmartEdit client / load generator: the client SDK and CLI, Locust and the load test. No torch.
#
#   docker build -f docker/client.Dockerfile -t smartedit-client:0.1.0 .
#   docker run --rm smartedit-client:0.1.0 --host smartedit.example.com:443 --grpc-ssl --workload sd15
FROM python:3.11-slim

WORKDIR /opt/smartedit
COPY client ./client
COPY loadtests ./loadtests
RUN python -m pip install --no-cache-dir "./client[loadtest]" \
 && python -c "import smartedit_client, locust" \
 && useradd --uid 1000 --create-home loadtest

USER 1000
ENTRYPOINT ["python", "/opt/smartedit/loadtests/run.py"]
CMD ["--help"]
